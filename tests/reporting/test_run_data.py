"""The report reads every search experiment of a run: with sweep.extend_edges the follow-up round's
trials are in Ray's experiment `sweep_extended`, beside `sweep`, and outside the ranges the saved
config holds. Run dirs written by hand in the files Ray writes (result.json, one line per evaluation,
and params.json per trial folder), so no sweep runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medsweep.reporting import report, run_data
from medsweep.rundir import RunDir

SPACE = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1.0e-4, "upper": 1.0e-3}}}
# experiment -> (trial id, learning rate, val_f1_macro per evaluation, val_auroc per evaluation)
TRIALS = {
    "sweep": [("aaaa0001", 2e-4, [0.20, 0.30], [0.60, 0.62]),
              ("aaaa0002", 9e-4, [0.35, 0.45], [0.55, 0.58])],
    # The follow-up round searched [9e-4, 9e-3]: past the upper edge of the saved range.
    "sweep_extended": [("bbbb0001", 3e-3, [0.40, 0.55], [0.70, 0.66]),
                       ("bbbb0002", 6e-3, [0.38, 0.42], [0.64, 0.75])],
}


def write_trial(experiment, trial_id: str, lr: float, f1: list, auroc: list, started: float) -> None:
    folder = experiment / f"tune_trial_{trial_id}_1_learning_rate={lr:.4f}_2026-01-01_00-00-00"
    folder.mkdir(parents=True)
    params = {"trainer": {"learning_rate": lr}}
    rows = [{"val_f1_macro": f, "val_auroc": a, "val_loss": 1.5 - f, "step": 50 * (i + 1), "epoch": float(i + 1),
             "evaluation": i + 1, "final": i == len(f1) - 1, "training_iteration": i + 1, "trial_id": trial_id,
             "timestamp": int(started + 10 * (i + 1)), "time_total_s": 10.0 * (i + 1), "config": params}
            for i, (f, a) in enumerate(zip(f1, auroc))]
    (folder / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "params.json").write_text(json.dumps(params))


def config_for(run_dir, **sweep) -> dict:
    return {"run_dir": str(run_dir), "cluster": {"storage_path": None},
            "sweep": {"name": "two-rounds", "metric": "val_f1_macro", "mode": "max", "search_space": SPACE, **sweep}}


@pytest.fixture
def two_rounds(tmp_path):
    """A run dir whose trials are in both search experiments, its config saved as Hydra saves it."""
    run_dir = tmp_path / "run"
    paths = RunDir(run_dir)
    started = 1_800_000_000.0
    rows = []
    for experiment, trials in TRIALS.items():
        for trial_id, lr, f1, auroc in trials:
            write_trial(Path(paths.experiment(experiment)), trial_id, lr, f1, auroc, started)
            started += 100
            rows.append({"trial_id": trial_id, "trainer.learning_rate": lr, "metric": "val_f1_macro",
                         "best_value": max(f1), "status": "completed"})
    pd.DataFrame(rows).to_csv(paths.leaderboard_csv, index=False)
    paths.hydra_config.parent.mkdir(parents=True)
    paths.hydra_config.write_text(yaml.safe_dump(config_for(run_dir)))
    return run_dir


def test_the_report_reads_the_trials_of_both_search_experiments(two_rounds):
    data = run_data.load(two_rounds)
    every = [trial_id for trials in TRIALS.values() for trial_id, *_ in trials]
    assert [t.trial_id for t in data.trials] == every  # in the order they started
    assert {t.status for t in data.trials} == {"completed"}
    assert {t.trial_id: t.best_value(data.objective) for t in data.trials} == {
        trial_id: max(f1) for trials in TRIALS.values() for trial_id, _, f1, _ in trials}
    # The learning-rate axis holds the follow-up round's trials too.
    spec = data.param_specs["trainer.learning_rate"]
    assert spec["lower"] == pytest.approx(1e-4) and spec["upper"] == pytest.approx(6e-3)


def test_every_sweep_plot_is_drawn_over_both_rounds(two_rounds):
    out_dir = report.write_report(two_rounds)
    assert {p.stem for p in out_dir.glob("*.png")} == {
        "optimization_history", "param_importances", "parallel_coordinates", "learning_curves"}
    index = (out_dir / "index.html").read_text()
    assert "4 trial(s) with results" in index and "failed" not in index


def test_a_multi_objective_sweep_is_reported_by_its_primary_objective(two_rounds):
    # sweep.metrics[0] is the primary objective; sweep.metric is not rewritten to it (plan.py).
    config = config_for(two_rounds, metrics=["val_auroc", "val_loss"], modes=["max", "min"])
    data = run_data.load(two_rounds, config)
    assert (data.metric, data.mode) == ("val_auroc", "max")
    best = {t.trial_id: t.best_value(data.objective) for t in data.trials}
    assert best == {trial_id: max(auroc) for trials in TRIALS.values() for trial_id, _, _, auroc in trials}
