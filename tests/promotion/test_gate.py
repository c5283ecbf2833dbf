"""promote.gate: a retrain is promoted only when medsweep.compare's paired comparison on the same test
split says it is not significantly worse than the earlier promoted model; a block publishes nothing.

One real tiny trial (module fixture) is promoted as the earlier run. The gate passes against that same
model (difference 0). To block, the earlier run is copied with an oracle's test predictions (every row
right, as a much stronger earlier model would have): the candidate is then significantly worse."""

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from medsweep.config import ConfigError
from medsweep.promotion import gate
from medsweep.promotion.release import promote_checkpoint
from medsweep.release import layout, store
from medsweep.search import sweep
from medsweep.serving import serve
from medsweep.serving.inference import load_promoted
from tests.conftest import TINY, compose_config, serving, tiny_checkpoints

TOKEN = "gate-token-0123456789abcdef"
FAST = ["promote.bootstrap_resamples=200"]


def oracle_copy(earlier: Path, target: Path) -> Path:
    """`earlier` with its promoted test predictions replaced by an oracle's (every test row right)."""
    shutil.copytree(earlier, target, symlinks=True)
    folder = (target / "promoted").resolve()
    saved = layout.read_test_predictions(folder)
    labels, k = saved["labels"], len(saved["label_names"])
    probs = np.full((len(labels), k), 0.02 / (k - 1))
    probs[np.arange(len(labels)), labels] = 0.98
    np.savez_compressed(folder / layout.PREDICTIONS_FILE, labels=labels, probs=probs,
                        label_names=np.array(saved["label_names"]))
    return target


def snapshot(root: Path) -> dict:
    """Every file's bytes and every link's target under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = ("link", os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """(the checkpoint, an earlier run dir that promoted it, the same run with an oracle's test predictions)."""
    base = tmp_path_factory.mktemp("gate")
    checkpoint, _ = tiny_checkpoints(base, FAST)[-1]
    promote_checkpoint(checkpoint, base / "earlier")
    return checkpoint, base / "earlier", oracle_copy(base / "earlier", base / "oracle")


def plan_for(run_dir: Path, against: Path, overrides=()):
    return sweep.preflight(compose_config(TINY + FAST + [f"promote.gate={against}", *overrides], run_dir=run_dir))


def test_a_gate_that_passes_promotes_and_says_so(earlier, tmp_path):
    checkpoint, earlier_run, _ = earlier
    plan = plan_for(tmp_path / "new", earlier_run)
    gate.check(plan)
    link = promote_checkpoint(checkpoint, tmp_path / "new", splits=plan.splits, gate=gate.for_plan(plan))
    verdict = layout.read_metrics(link)["gate"]
    assert verdict["promoted"] and not verdict["significantly_worse"]
    assert verdict["metric"] == "test_f1_macro" and verdict["against_version"] == "v001"
    assert verdict["difference"] == 0 and verdict["ci"] == [0.0, 0.0] and verdict["alpha"] == 0.05
    assert json.loads((tmp_path / "new" / "gate.json").read_text())["promoted"]
    card = (link / layout.CARD_FILE).read_text()
    assert "Promotion gate" in card and "not significantly worse, promoted" in card


def test_a_gate_that_blocks_publishes_nothing_and_reload_is_a_no_op(earlier, tmp_path):
    """A run dir serving v001 retrains; the candidate loses to the (oracle) earlier model: v001 stays
    promoted and keeps serving, /reload changes nothing, the earlier run dir is byte-identical."""
    checkpoint, earlier_run, oracle = earlier
    run_dir = tmp_path / "serving-run"
    shutil.copytree(earlier_run, run_dir, symlinks=True)
    before, oracle_before = snapshot(run_dir), snapshot(oracle)
    plan = plan_for(run_dir, oracle)
    gate.check(plan)
    with serving(serve.create_app(load_promoted(run_dir / "promoted"), TOKEN)) as url:
        with pytest.raises(gate.Blocked) as blocked:
            promote_checkpoint(checkpoint, run_dir, splits=plan.splits, gate=gate.for_plan(plan))
        reloaded = httpx.post(f"{url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert reloaded.status_code == 200 and reloaded.json() == {"version": "v001", "previous_version": "v001"}
    message = str(blocked.value)
    assert "\n" not in message and message.startswith("promote.gate blocked: significantly worse than")
    verdict = json.loads((run_dir / "gate.json").read_text())
    assert verdict["significantly_worse"] and not verdict["promoted"] and verdict["ci"][1] < 0
    assert verdict["earlier"] == 1.0 and 0 < verdict["mcnemar_accuracy_p_value"] < 0.05
    after = snapshot(run_dir)
    after.pop("gate.json")
    assert after == before  # the link, v001, the history: as they were; no v002, no staged folder
    assert snapshot(oracle) == oracle_before
    assert store.current_version(run_dir) == "v001"


def test_a_gate_without_a_promoted_model_or_of_another_task_is_refused_before_any_trial(earlier, tmp_path):
    _, earlier_run, _ = earlier
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no promoted model there"):
        gate.check(plan_for(tmp_path / "a", tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"its model has the labels \['neoplasms'.*this task \['maybe', 'no', 'yes'\]"):
        gate.check(plan_for(tmp_path / "b", earlier_run, ["data=pubmedqa"]))
    with pytest.raises(ConfigError, match="needs promote.enabled=true"):
        gate.check(plan_for(tmp_path / "d", earlier_run, ["promote.enabled=false"]))
    with pytest.raises(ConfigError, match="no test counterpart"):
        gate.check(plan_for(tmp_path / "c", earlier_run, ["sweep.metric=val_loss", "sweep.mode=min"]))


def test_a_retrain_with_feedback_that_loses_ends_in_one_line_and_exit_3(earlier, tmp_path):
    """The whole command: `python -m medsweep.run ... data.feedback=<db> promote.gate=<earlier run>`."""
    from medsweep.data import load_splits
    from medsweep.serving.feedback import FeedbackStore, Remembered
    from tests.conftest import run_cli

    _, _, oracle = earlier
    names = load_splits(compose_config(TINY)["data"]).label_names
    db = FeedbackStore(tmp_path / "feedback.sqlite")
    for i, note in enumerate(["Metastatic melanoma to the brain.", "Gallstone pancreatitis after a fatty meal."]):
        db.add(f"p{i}", Remembered(note, None, names[1], {}, "v001", (), False, "2026-01-01T00:00:00"), names[i])
    before = snapshot(oracle)
    run_dir = tmp_path / "retrain"
    proc = run_cli(*TINY, *FAST, f"data.feedback={db.path}", f"promote.gate={oracle}", f"hydra.run.dir={run_dir}",
                   timeout=240)
    assert proc.returncode == gate.EXIT_CODE, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("medsweep")]
    assert len(ours) == 1 and ours[0].startswith("medsweep: promote.gate blocked"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    verdict = json.loads((run_dir / "gate.json").read_text())
    assert verdict["significantly_worse"] and verdict["candidate_report"]["feedback"]["added_to_train"] == 2
    assert json.loads((run_dir / "data_summary.json").read_text())["feedback"]["added_to_train"] == 2
    assert not (run_dir / "promoted").exists() and snapshot(oracle) == before
