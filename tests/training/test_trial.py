"""The trial function on its own: no Ray, a tiny random BERT, real training for a few steps."""

import shutil

import numpy as np
import pytest
from safetensors import safe_open

from medsweep import data
from medsweep.training.model import ADAPTER_WEIGHTS, build_model, load_checkpoint, read_checkpoint_info
from medsweep.serving.inference import predict_proba
from medsweep.training.trial import run_trial
from transformers import AutoTokenizer


def test_trial_runs_without_ray_and_reports_every_evaluation(tiny_config, tmp_path):
    seen = []

    def hook(report, checkpoint_dir):
        seen.append((report, sorted(p.name for p in checkpoint_dir.iterdir())))

    result = run_trial(tiny_config, on_evaluation=hook)
    history = result["history"]
    assert [h["evaluation"] for h in history] == [1, 2]  # epochs=2, one evaluation per epoch
    assert history[-1]["final"] and not history[0]["final"]
    assert history[1]["step"] > history[0]["step"]
    for report in history:
        assert 0.0 <= report["val_f1_macro"] <= 1.0 and 0.0 <= report["val_accuracy"] <= 1.0
        assert 0.0 <= report["val_auroc"] <= 1.0
    best = max(history, key=lambda h: (h["val_f1_macro"], h["step"]))
    assert result["best"] == best
    assert [r for r, _ in seen] == history
    # Each checkpoint is complete enough to resume from, not just to load.
    for _, files in seen:
        assert {"model.safetensors", "config.json", "trial.json", "tokenizer.json", "optimizer.pt",
                "scheduler.pt", "trainer_state.json"} <= set(files), files


def test_eval_every_steps_and_fractional_epochs_score_the_final_weights(tiny_config):
    tiny_config["trainer"].update(eval_every_steps=4, epochs=1.5)
    result = run_trial(tiny_config)
    steps = [h["step"] for h in result["history"]]
    # 96 rows / batch 16 = 6 steps per epoch -> 9 steps; evaluated at 4, 8 and the final 9.
    assert steps == [4, 8, 9]


def test_lora_head_is_trainable_and_saved_with_the_adapter(tiny_config, tmp_path):
    tiny_config["model"].update(finetune="lora")
    tiny_config["model"]["lora"].update(r=4, alpha=8, target_modules="query,value")
    splits = data.load_splits(tiny_config["data"])
    model = build_model(tiny_config["model"], splits.label_names)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trainable)
    # BERT's pooler feeds the classifier: it is head, trained in full like the classifier.
    assert any("pooler" in name for name in trainable)
    assert any("lora_A" in name for name in trainable)
    assert not any("word_embeddings" in name for name in trainable)  # the base stays frozen
    frozen_pooler = dict(tiny_config["model"], lora=dict(tiny_config["model"]["lora"], train_pooler=False))
    assert not any("pooler" in name for name, p in build_model(frozen_pooler, splits.label_names).named_parameters()
                   if p.requires_grad)

    kept = tmp_path / "ckpt"

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    tiny_config["trainer"]["learning_rate"] = 2e-2  # move the zero-initialised lora_B away from 0
    run_trial(tiny_config, on_evaluation=keep_last)
    with safe_open(str(kept / ADAPTER_WEIGHTS), "pt") as tensors:
        keys = list(tensors.keys())
        assert any("classifier" in k for k in keys), keys
        pooler = [k for k in keys if "pooler" in k and k.endswith("weight")]
        assert pooler, keys
        trained_pooler = tensors.get_tensor(pooler[0])
        lora_b = [tensors.get_tensor(k) for k in keys if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)

    # The merged model (what gets promoted) predicts exactly what base + adapter predicts.
    merged = load_checkpoint(kept, merge=True)
    adapted = load_checkpoint(kept, merge=False)
    tokenizer = AutoTokenizer.from_pretrained(kept)
    texts = splits.validation["text"].tolist()[:20]
    p_merged = predict_proba(merged, tokenizer, texts, max_length=32)
    p_adapted = predict_proba(adapted, tokenizer, texts, max_length=32)
    np.testing.assert_allclose(p_merged, p_adapted, atol=1e-5)
    # The trained pooler, not the base model's, is what the merged (promoted) model carries.
    assert not np.allclose(trained_pooler.numpy(), model.base_model.model.bert.pooler.original_module.dense.weight.detach().numpy())
    np.testing.assert_allclose(merged.bert.pooler.dense.weight.detach().numpy(), trained_pooler.numpy())
    assert read_checkpoint_info(kept)["label_names"] == splits.label_names
    assert merged.config.id2label[0] == "neoplasms"


def test_trial_rejects_a_metric_it_never_reports(tiny_config):
    tiny_config["sweep"]["metric"] = "val_f2"
    tiny_config["data"]["max_train_samples"] = 16
    tiny_config["trainer"]["epochs"] = 1
    with pytest.raises(KeyError, match="val_f2"):
        run_trial(tiny_config)
