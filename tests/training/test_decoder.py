"""Decoder LMs as classifiers, on a tiny random Llama built locally: pad token, LoRA with its head,
the QLoRA guard, both promoted layouts, and a real LoRA sweep through the CLI and Ray Tune."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, BitsAndBytesConfig

from medsweep import data
from medsweep.search import sweep
from medsweep.config import ConfigError
from medsweep.hf import resolve_model as resolve
from medsweep.release import layout
from medsweep.serving.inference import predict_proba
from medsweep.training.model import (ADAPTER_WEIGHTS, build_model, check_lora_targets, load_base, load_checkpoint,
                                     load_tokenizer, read_checkpoint_info)
from medsweep.training.precision import base_reference
from medsweep.training.trial import run_trial
from tests.conftest import TINY, compose_config, run_cli

TINY_LLAMA = [o for o in TINY if not o.startswith("model=")] + ["model=tiny_random_llama"]
TEXTS = ["Adenocarcinoma of the colon with hepatic metastases treated by resection and chemotherapy.",
         "Stroke.",
         "Acute myocardial infarction in elderly patients with diabetes."]


@pytest.fixture(scope="module")
def llama_config(tmp_path_factory) -> dict:
    return compose_config(TINY_LLAMA, run_dir=tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def trained(llama_config, tmp_path_factory):
    """One real LoRA trial on the tiny Llama; its last checkpoint copied out."""
    config = json.loads(json.dumps(llama_config))
    config["trainer"]["learning_rate"] = 2e-2  # move the zero-initialised lora_B away from 0
    kept = tmp_path_factory.mktemp("ckpt") / "last"

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    return config, run_trial(config, on_evaluation=keep_last), kept


def test_a_tokenizer_without_pad_token_pads_with_eos_on_the_right(llama_config):
    model_cfg = llama_config["model"]
    assert AutoTokenizer.from_pretrained(resolve(model_cfg["name_or_path"])).pad_token is None  # like Llama 3
    tokenizer = load_tokenizer(model_cfg)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    model = load_base(model_cfg, ["a", "b"])
    assert model.config.pad_token_id == tokenizer.eos_token_id


def test_a_padded_batch_scores_like_each_example_alone(llama_config):
    model_cfg = llama_config["model"]
    tokenizer = load_tokenizer(model_cfg)
    model = load_base(model_cfg, ["a", "b", "c"]).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # the short texts really are padded
    with torch.inference_mode():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone[0], alone[1])  # a random head still tells texts apart


def test_lora_targets_the_attention_and_trains_the_head_in_full(llama_config):
    model_cfg = json.loads(json.dumps(llama_config["model"]))
    model = build_model(model_cfg, ["a", "b", "c"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and any("v_proj.lora_B" in n for n in trainable)
    assert not any("k_proj" in n or "mlp" in n or "embed_tokens" in n for n in trainable)
    # all-linear adapts the MLP too, but never wraps the head in LoRA: it is trained in full.
    model_cfg["lora"]["target_modules"] = "all-linear"
    model = build_model(model_cfg, ["a", "b", "c"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("mlp.down_proj.lora_A" in n for n in trainable)
    assert not any("score" in n and "lora_" in n for n in trainable)
    model_cfg["lora"]["target_modules"] = "query,value"  # BERT's names do not exist in a Llama
    with pytest.raises(ConfigError, match="target_modules"):
        build_model(model_cfg, ["a", "b", "c"])
    # A sweep that would hand trials such names is refused before Ray starts; the decoder sweep is not.
    bert_sweep = compose_config(["+sweep=lr_lora", *TINY_LLAMA])
    with pytest.raises(ConfigError, match="llama has no module named query, value; its linear layers are .*q_proj"):
        check_lora_targets(bert_sweep["model"], bert_sweep["sweep"]["search_space"])
    decoder_sweep = compose_config(["+sweep=lr_lora_decoder", *TINY_LLAMA])
    check_lora_targets(decoder_sweep["model"], decoder_sweep["sweep"]["search_space"])


def test_the_head_is_saved_and_merged_weights_predict_like_the_adapter(trained):
    config, result, kept = trained
    assert result["dtype"] == "float32" and all(h["dtype"] == "float32" for h in result["history"])
    with safe_open(str(kept / ADAPTER_WEIGHTS), "pt") as tensors:
        keys = list(tensors.keys())
        assert any("score" in k for k in keys), keys
        assert any(tensors.get_tensor(k).abs().sum() > 0 for k in keys if "lora_B" in k)
    merged = load_checkpoint(kept, merge=True)
    adapted = load_checkpoint(kept, merge=False)
    tokenizer = AutoTokenizer.from_pretrained(kept)
    assert tokenizer.pad_token == tokenizer.eos_token  # the pad token survives the checkpoint
    assert merged.config.pad_token_id == tokenizer.pad_token_id
    texts = data.load_splits(config["data"]).validation["text"].tolist()[:20]
    p_merged = predict_proba(merged, tokenizer, texts, max_length=32, batch_size=8)
    np.testing.assert_allclose(p_merged, predict_proba(adapted, tokenizer, texts, max_length=32, batch_size=8), atol=1e-5)
    # One at a time (no padding at all) gives the same probabilities as padded batches.
    np.testing.assert_allclose(p_merged, predict_proba(merged, tokenizer, texts, max_length=32, batch_size=1), atol=1e-5)


def test_adapter_plus_base_reference_layout_loads_like_merged_weights(trained, tmp_path):
    config, _, kept = trained
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter_layout"
    tokenizer = AutoTokenizer.from_pretrained(kept)
    labels = read_checkpoint_info(kept)["label_names"]
    assert layout.write_model(merged_dir, load_checkpoint(kept, merge=True), tokenizer, adapter_source=kept) == layout.MERGED
    # The layout promotion writes for a 4-bit base, here around an unquantized one so it runs on CPU.
    reference = base_reference(config["model"], labels)
    assert layout.write_model(adapter_dir, None, tokenizer, adapter_source=kept, base_reference=reference) == layout.ADAPTER
    assert not (adapter_dir / layout.MODEL_CONFIG).exists() and (adapter_dir / layout.ADAPTER_DIR).is_dir()
    written = json.loads((adapter_dir / layout.BASE_MODEL_FILE).read_text())
    assert written["name_or_path"] == "builtin:tiny-random-llama" and written["quantization"] == "none"

    from_merged, tokenizer, _ = layout.load(merged_dir)
    from_adapter, _, settings = layout.load(adapter_dir)
    assert settings.layout == layout.ADAPTER and settings.label_names == labels
    assert type(from_adapter).__name__.startswith("Peft") and not type(from_merged).__name__.startswith("Peft")
    p1 = predict_proba(from_merged, tokenizer, TEXTS, max_length=32)
    np.testing.assert_allclose(p1, predict_proba(from_adapter, tokenizer, TEXTS, max_length=32), atol=1e-5)

    # A 4-bit reference records QLoRA's recipe; loading it where there is no GPU says so in one line.
    quantized = base_reference(dict(config["model"], quantization="4bit"), labels)
    (adapter_dir / layout.BASE_MODEL_FILE).write_text(json.dumps(quantized))
    recipe = BitsAndBytesConfig(**quantized["bitsandbytes"])
    assert recipe.load_in_4bit and recipe.bnb_4bit_quant_type == "nf4" and recipe.bnb_4bit_use_double_quant
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            layout.load(adapter_dir)


def test_bfloat16_keeps_trainable_weights_float32_and_records_the_dtype(llama_config):
    config = json.loads(json.dumps(llama_config))
    config["model"]["dtype"] = "bfloat16"  # what auto picks on a GPU; CPUs autocast bfloat16 too
    config["data"]["max_train_samples"], config["trainer"]["epochs"] = 48, 1
    model = build_model(config["model"], ["a", "b", "c"])
    trainable = [p.dtype for p in model.parameters() if p.requires_grad]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable and set(trainable) == {torch.float32} and frozen == {torch.bfloat16}
    result = run_trial(config)
    assert result["dtype"] == "bfloat16" and result["history"][-1]["dtype"] == "bfloat16"
    assert np.isfinite(result["train_loss"]) and 0.0 <= result["best"]["val_f1_macro"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_4bit_without_cuda_fails_in_one_line_before_ray_starts(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY_LLAMA, "model.quantization=4bit", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "model.quantization=4bit" in lines[0] and "CUDA" in lines[0], proc.stderr
    assert not (run_dir / "ray").exists() and not (run_dir / "promoted").exists()


def test_4bit_preflight_names_each_missing_piece(llama_config, monkeypatch):
    config = json.loads(json.dumps(llama_config))
    config["model"]["quantization"] = "4bit"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    with pytest.raises(ConfigError, match="gpus_per_trial"):
        sweep.preflight(config)
    config["cluster"]["gpus_per_trial"] = 1
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(ConfigError, match=r"bitsandbytes.*medsweep\[qlora\]"):
        sweep.preflight(config)
    config["model"]["finetune"] = "full"
    with pytest.raises(ConfigError, match="model.finetune=lora"):
        sweep.preflight(config)
    config["model"].update(finetune="lora", quantization="none", dtype="float64")
    with pytest.raises(ConfigError, match="model.dtype must be one of"):
        sweep.preflight(config)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config["model"]["dtype"] = "float16"  # CPUs have no float16 training
    with pytest.raises(ConfigError, match="model.dtype=float16 needs a CUDA GPU"):
        sweep.preflight(config)


@pytest.mark.slow  # a real Ray sweep of ~20-40 s; keeps the default suite under 10 min (`make test-slow`)
def test_lora_decoder_sweep_trains_promotes_and_predicts(tmp_path):
    from transformers import pipeline

    run_dir = tmp_path / "run"
    proc = run_cli("+sweep=lr_lora_decoder", *TINY_LLAMA, "data.max_train_samples=64", "data.max_eval_samples=40",
                   "trainer.eval_batch_size=40", "sweep.num_trials=2", "sweep.max_concurrent=2",
                   f"hydra.run.dir={run_dir}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(run_dir / "leaderboard.csv")))
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"completed", "early_stopped"}, proc.stdout[-3000:]
    for row in rows:  # the decoder search space was sampled
        assert row["model.lora.target_modules"] in ("q_proj,v_proj", "all-linear")
        assert int(row["model.lora.r"]) in (8, 16, 32) and int(row["trainer.gradient_accumulation_steps"]) in (1, 2, 4)
        assert 5e-5 <= float(row["trainer.learning_rate"]) <= 1e-3

    promoted = run_dir / "promoted"
    assert (promoted / "model.safetensors").exists() and (promoted / layout.ADAPTER_DIR).is_dir()
    assert not (promoted / layout.BASE_MODEL_FILE).exists()  # unquantized base: merged weights
    metrics = json.loads((promoted / "metrics.json").read_text())
    assert metrics["validation"]["dtype"] == "float32"
    model_config = json.loads((promoted / "config.json").read_text())
    assert model_config["model_type"] == "llama" and model_config["architectures"] == ["LlamaForSequenceClassification"]

    model, tokenizer, _ = layout.load(promoted)
    assert model_config["pad_token_id"] == tokenizer.pad_token_id == tokenizer.eos_token_id
    probs = predict_proba(model, tokenizer, TEXTS, max_length=128)  # no truncation, like the pipeline
    classify = pipeline("text-classification", model=str(promoted), batch_size=3)
    out = classify(TEXTS)
    labels = metrics["label_names"]
    assert [o["label"] for o in out] == [labels[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose([o["score"] for o in out], probs.max(axis=1), atol=1e-5)
