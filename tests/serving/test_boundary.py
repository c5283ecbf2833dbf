"""What a deployed service imports: serving loads and predicts without Ray or the training stack."""

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, sys
import medsweep.serve, medsweep.predict, medsweep.explain
from medsweep.serving import explain, inference, predict, serve
loaded = [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "medsweep.training", "medsweep.search"))
          or m in ("transformers.trainer", "optuna", "hydra")]
model = sys.argv[1]
if model:
    promoted = inference.load_promoted(model)
    promoted.predict(["Acute myocardial infarction."])
    loaded += [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "medsweep.training", "medsweep.search"))
               or m in ("transformers.trainer", "optuna", "hydra")]
print(json.dumps(sorted(set(loaded))))
"""


def imported_by_serving(model: str = "") -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, model], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serving_modules_import_neither_ray_nor_training():
    assert imported_by_serving() == []


def test_loading_and_predicting_a_promoted_model_stays_clear_of_them(smoke_sweep):
    run_dir, _, _ = smoke_sweep
    assert imported_by_serving(str(run_dir / "promoted")) == []
