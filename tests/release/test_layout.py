"""The promoted folder, every layout, written by promotion and read back by every reader: load_promoted,
`medsweep.predict`, the HTTP service and, where the layout allows it, `transformers.pipeline`."""

import json
import shutil

import httpx
import numpy as np
import pandas as pd
import pytest

from medsweep import data
from medsweep.release import layout
from medsweep.promotion.release import promote_checkpoint
from medsweep.serving import predict, serve
from medsweep.serving.inference import load_promoted
from medsweep.training import precision
from medsweep.training.trial import run_trial
from tests.conftest import TINY, compose_config, serving

TOKEN = "layout-token-0123456789abcdef"
TEXTS = ["Adenocarcinoma of the colon with hepatic metastases.", "Acute myocardial infarction.",
         "Ischemic stroke of the middle cerebral artery.", "Crohn disease of the terminal ileum."]
LORA = ["model.finetune=lora", "model.lora.r=4", "model.lora.alpha=8", "trainer.learning_rate=2e-2"]


def fake_4bit(monkeypatch):
    """A CPU stand-in for a bitsandbytes base: the training side loads it unquantized where it would
    load it in 4 bits, and the reader does the same; everything else (the layout, the base
    reference, the unmerged adapter) is what a GPU run writes and reads."""
    monkeypatch.setattr(precision, "check_precision", lambda *args, **kwargs: None)
    monkeypatch.setattr(precision, "loading_kwargs", lambda *args, **kwargs: {})
    monkeypatch.setattr(layout, "quantization_kwargs", lambda reference: {})


@pytest.fixture(scope="module", params=["full", "merged_lora", "adapter_4bit"])
def promoted(request, tmp_path_factory):
    """A real tiny trial of each kind, promoted by promote_checkpoint: (kind, promoted link)."""
    kind = request.param
    base = tmp_path_factory.mktemp(kind)
    kept = base / "ckpt"

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    run_trial(compose_config(TINY + ([] if kind == "full" else LORA), run_dir=base), on_evaluation=keep_last)
    with pytest.MonkeyPatch.context() as patch:
        if kind == "adapter_4bit":
            # The checkpoint of a QLoRA trial differs from this one only in what its config says.
            info = json.loads((kept / "trial.json").read_text())
            info["config"]["model"]["quantization"] = "4bit"
            (kept / "trial.json").write_text(json.dumps(info))
            fake_4bit(patch)
        link = promote_checkpoint(kept, base / "run")
    return kind, link


@pytest.fixture
def readers(promoted, monkeypatch):
    kind, link = promoted
    if kind == "adapter_4bit":
        fake_4bit(monkeypatch)
    return kind, link


def promotion_probs(link):
    """The test split's probabilities as promotion scored them, and the test texts."""
    saved = layout.read_test_predictions(link)
    config = json.loads((link / "metrics.json").read_text())["config"]
    test = data.load_splits(config["data"]).test
    return saved["probs"], test["text"].tolist()


def test_the_layout_matches_the_model_kind(promoted):
    kind, link = promoted
    settings = layout.read_settings(link)
    assert settings.folder == link.resolve() and settings.version == "v001"
    files = {p.name for p in settings.folder.iterdir()}
    assert {layout.METRICS_FILE, layout.SETTINGS_FILE, layout.CARD_FILE, layout.PREDICTIONS_FILE} <= files
    if kind == "adapter_4bit":
        assert settings.layout == layout.ADAPTER and layout.MODEL_CONFIG not in files
        reference = layout.read_base_reference(settings.folder)
        assert reference["quantization"] == "4bit" and reference["bitsandbytes"]["bnb_4bit_quant_type"] == "nf4"
        assert reference["label_names"] == settings.label_names
    else:
        assert settings.layout == layout.MERGED and "model.safetensors" in files
        assert (layout.ADAPTER_DIR in files) == (kind == "merged_lora")


def test_load_promoted_predicts_what_promotion_scored(readers):
    _, link = readers
    probs, texts = promotion_probs(link)
    model = load_promoted(link)
    np.testing.assert_allclose(model.predict(texts), probs, atol=1e-5)


def test_predict_cli_reads_every_layout(readers, tmp_path):
    _, link = readers
    probs, texts = promotion_probs(link)
    source = tmp_path / "in.csv"
    pd.DataFrame({"medical_abstract": texts}).to_csv(source, index=False)
    assert predict.main([f"model={link}", f"input={source}", f"output={tmp_path / 'out.csv'}"]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    labels = layout.read_settings(link).label_names
    np.testing.assert_allclose(out[[f"prob_{n}" for n in labels]].to_numpy(), probs, atol=1e-5)


def test_the_http_service_serves_every_layout(readers):
    _, link = readers
    model = load_promoted(link)
    with serving(serve.create_app(model, TOKEN)) as url:
        response = httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    got = np.array([[p["probabilities"][n] for n in model.label_names] for p in response.json()["predictions"]])
    np.testing.assert_allclose(got, model.predict(TEXTS), atol=1e-6)
    assert response.json()["version"] == "v001"


def test_transformers_pipeline_loads_the_merged_layouts(promoted):
    from transformers import pipeline

    kind, link = promoted
    if kind == "adapter_4bit":
        # No config.json: the base is named in base_model.json, which only medsweep (or a person) reads.
        with pytest.raises((OSError, ValueError)):
            pipeline("text-classification", model=str(link))
        return
    probs = load_promoted(link).predict(TEXTS)
    out = pipeline("text-classification", model=str(link))(TEXTS, truncation=True, max_length=32)
    labels = layout.read_settings(link).label_names
    assert [o["label"] for o in out] == [labels[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose([o["score"] for o in out], probs.max(axis=1), atol=1e-5)


def unbaked_logits(link, texts):
    """The logits of the checkpoint the folder was promoted from, before any temperature."""
    import torch
    from transformers import AutoTokenizer

    from medsweep.training.model import load_checkpoint

    kept = link.parent.parent / "ckpt"
    model = load_checkpoint(kept, merge=True).eval()
    batch = AutoTokenizer.from_pretrained(kept)(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.double().numpy()


def test_the_temperature_is_baked_into_every_layout_and_sets_are_in_every_layout(readers):
    """issue 27: `pipeline()` itself returns softmax(logits / T) of the unbaked model, no argmax moves;
    in the 4-bit adapter layout T is baked into the adapter's classifier head (modules_to_save), so
    base + adapter loads calibrated; every layout has its conformal set."""
    from transformers import pipeline

    kind, link = readers
    report = layout.read_metrics(link)
    decision = layout.read_settings(link).decision
    assert decision["conformal"]["threshold"] == report["conformal"]["threshold"]
    assert decision["conformal"]["calibration_rows"] == report["calibration"]["rows"] > 0
    assert load_promoted(link).conformal_threshold == report["conformal"]["threshold"]
    temperature = report["calibration"]["temperature"]
    assert report["calibration"]["applied"] and abs(temperature - 1.0) > 1e-3  # a real T, not a no-op
    if kind == "adapter_4bit":
        # base_model.json + adapter/ loaded as PEFT loads them: the head under adapter/ carries 1/T.
        logits = unbaked_logits(link, TEXTS)
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum(axis=1, keepdims=True)
        got = load_promoted(link).predict(TEXTS)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert (got.argmax(axis=1) == logits.argmax(axis=1)).all()
        unscaled = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        assert np.abs(got - unscaled).max() > 1e-4
        assert "note" not in report["calibration"]
        return
    assert ("unscaled classifier head" in report["calibration"].get("note", "")) == (kind == "merged_lora")
    logits = unbaked_logits(link, TEXTS)
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum(axis=1, keepdims=True)
    labels = layout.read_settings(link).label_names
    out = pipeline("text-classification", model=str(link), top_k=None)(TEXTS, truncation=True, max_length=32)
    got = np.array([[{o["label"]: o["score"] for o in row}[name] for name in labels] for row in out])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(axis=1) == logits.argmax(axis=1)).all()
    # Unscaled, the probabilities really differ: the check above could fail.
    unscaled = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(got - unscaled).max() > 1e-4
    np.testing.assert_allclose(load_promoted(link).predict(TEXTS), expected, atol=1e-5)
