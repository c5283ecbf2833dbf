"""What a deployed service imports: serving loads and predicts without Ray or the training stack."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

PROBE = """
import json, sys
import medsweep.serve, medsweep.predict, medsweep.explain, medsweep.feedback
from medsweep.serving import explain, feedback, inference, monitoring, page, predict, routes, serve
import medsweep.data.deid  # what feedback masks text with
loaded = [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "medsweep.training", "medsweep.search"))
          or m in ("transformers.trainer", "optuna", "hydra")]
model, answer = sys.argv[1], {}
if model:
    promoted = inference.load_promoted(model)
    answer = {"model": type(promoted.model).__name__,
              "probabilities": promoted.predict(["Acute myocardial infarction."]).tolist()}
    loaded += [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "medsweep.training", "medsweep.search"))
               or m in ("transformers.trainer", "optuna", "hydra")]
print(json.dumps({"loaded": sorted(set(loaded)), **answer}))
"""


def probe(model: str = "") -> dict:
    """A fresh interpreter imports every serving module and, given a promoted folder, loads it and
    predicts one text: {"loaded": the forbidden modules it imported, "model": the loaded class,
    "probabilities": [[...]]}."""
    proc = subprocess.run([sys.executable, "-c", PROBE, model], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def imported_by_serving(model: str = "") -> list[str]:
    return probe(model)["loaded"]


def test_serving_modules_import_neither_ray_nor_training():
    assert imported_by_serving() == []


def test_loading_and_predicting_a_promoted_model_stays_clear_of_them(smoke_sweep):
    run_dir, _, _ = smoke_sweep
    assert imported_by_serving(str(run_dir / "promoted")) == []


@pytest.fixture(scope="module")
def adapter_layout(tmp_path_factory):
    """A promoted folder of the adapter layout (tokenizer, adapter/, base_model.json: what promotion
    writes for a 4-bit base) whose base is `builtin:tiny-random-bert`, left unquantized so that it
    loads on the CPU. The adapter is a fresh LoRA on the 2-layer random BERT, saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medsweep.hf import resolve_model
    from medsweep.release import layout
    from medsweep.training.precision import base_reference  # the writer promotion uses

    base = tmp_path_factory.mktemp("adapter-layout")
    labels = ["neoplasms", "digestive system diseases", "cardiovascular diseases"]
    model_cfg = {"name_or_path": "builtin:tiny-random-bert", "revision": None, "dtype": "float32",
                 "quantization": "none"}
    base_path = resolve_model(model_cfg["name_or_path"])
    torch.manual_seed(0)
    # The built base has a 2-class head; this one gets a new head of 3 (as layout.load builds it).
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=len(labels),
                                                               ignore_mismatched_sizes=True)
    # SEQ_CLS: PEFT trains and saves the classifier head with the adapter, as medsweep's LoRA does.
    adapted = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    adapted.save_pretrained(base / "adapter-source")
    folder = base / "promoted"
    written = layout.write_model(folder, None, AutoTokenizer.from_pretrained(base_path),
                                 adapter_source=base / "adapter-source",
                                 base_reference=base_reference(model_cfg, labels))
    assert written == layout.ADAPTER and (folder / layout.BASE_MODEL_FILE).exists()
    assert not (folder / layout.MODEL_CONFIG).exists()
    return folder


def test_an_adapter_layout_with_a_builtin_base_loads_and_predicts_clear_of_them(adapter_layout):
    """The base is resolved by name (hf.resolve_model -> medsweep.builtin_models), which must not
    reach medsweep.training either."""
    from medsweep.serving.inference import load_promoted

    answer = probe(str(adapter_layout))
    assert answer["loaded"] == []
    assert answer["model"].startswith("Peft"), answer["model"]  # base + adapter, not a plain model
    probabilities = np.array(answer["probabilities"])
    assert probabilities.shape == (1, 3) and np.isclose(probabilities.sum(), 1.0)
    # The same folder loaded here answers the same: the probe really loaded this adapter and head.
    np.testing.assert_allclose(probabilities, load_promoted(adapter_layout).predict(["Acute myocardial infarction."]),
                               atol=1e-6)
