"""A kill -9 during Tune's copy of its state leaves the saved search state and the saved trial list
from different moments (medsweep/search/resume.py). Made here by editing a finished sweep's saved
state as such a kill leaves it; the same command then runs every trial the sweep asked for."""

import csv
import json

import pytest

from tests.conftest import run_cli
from tests.simulation.test_cluster_in_a_box import BENCHMARKS

pytest.importorskip("yahpo_gym", reason="needs the simulate extra: pip install -e '.[simulate]'")
# Two real sweeps (~1 minute): CI's fault stage, not the default suite.
pytestmark = [pytest.mark.slow, pytest.mark.faults,
              pytest.mark.skipif(not (BENCHMARKS / "lcbench" / "model.onnx").is_file(), reason="needs lcbench/")]


def rows(run_dir):
    with open(run_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_search_state_saved_ahead_of_the_trial_list_is_reconciled_and_every_trial_runs(tmp_path):
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    run_dir = tmp_path / "run"
    args = ["+sweep=replay_lcbench", f"replay.data_path={BENCHMARKS}", "sweep.num_trials=8", "sweep.max_concurrent=4",
            "sweep.scheduler=fifo", "trainer.evaluations=2", "replay.evaluation_s=0.2", f"hydra.run.dir={run_dir}"]
    first = run_cli(*args, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(rows(run_dir)) == 8

    # As a kill mid-copy leaves it: the trial list from before the last 3 trials were created (they
    # were still running, so no leaderboard rows), the search state from after (8 created, 3 live).
    experiment = run_dir / "ray" / "sweep"
    (state_file,) = experiment.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    dropped = {json.loads(trial)["trial_id"] for trial, _ in state["trial_data"][-3:]}
    state["trial_data"] = state["trial_data"][:-3]
    state_file.write_text(json.dumps(state))
    kept = [row for row in rows(run_dir) if row["trial_id"] not in dropped]
    with open(run_dir / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    (search_file,) = experiment.glob("search_gen_state-*.json")
    search = _load_newest_checkpoint(str(experiment), "search_gen_state-*.json")
    assert search["counter"] == 8
    search["name:ConcurrencyLimiter"].update(live_trials=set(dropped), num_unfinished_live_trials=3)
    _atomic_save(search, str(experiment), search_file.name, f"tmp-{search_file.name}")

    again = run_cli(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    final = rows(run_dir)
    # Without the repair Tune believed 8 trials created and ended with the 5 it knew.
    assert len(final) == len({row["trial_id"] for row in final}) == 8
    assert "saved search state and trial list disagreed: trials created 8 -> 5, live trials 3 -> 0" in again.stdout
    assert not dropped & {row["trial_id"] for row in final}
    assert {row["trial_id"]: row["best_value"] for row in kept}.items() <= {r["trial_id"]: r["best_value"] for r in final}.items()

