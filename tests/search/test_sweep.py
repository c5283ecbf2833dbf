"""End to end: Hydra CLI -> Ray Tune + Optuna + ASHA -> real training -> promotion -> pipeline()."""

import csv
import json
from pathlib import Path

import pytest

from medsweep.evaluation.metrics import metric_names
from tests.conftest import TINY, compose_config, run_cli


def reported_results(run_dir: Path) -> list[dict]:
    """Every evaluation every trial reported, read back from Ray's own result files."""
    rows = []
    for path in (run_dir / "ray" / "sweep").glob("*/result.json"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    # The shared smoke sweep (tracker=wandb): W&B is a callback and changes nothing checked here.
    run_dir, _, proc = smoke_sweep
    return run_dir, proc


def test_smoke_sweep_runs_ray_trials_and_writes_the_leaderboard(smoke_run):
    run_dir, proc = smoke_run
    with open(run_dir / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    header = list(rows[0])
    assert header[0] == "trial_id"
    assert {"trainer.learning_rate", "trainer.warmup_ratio", "best_value", "val_f1_macro", "val_auroc",
            "evaluations", "status"} <= set(header)
    assert {r["status"] for r in rows} <= {"completed", "early_stopped"}
    # Sorted best first; the learning rates came from the search space.
    values = [float(r["best_value"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert all(5e-4 <= float(r["trainer.learning_rate"]) <= 3e-3 for r in rows)
    assert len({r["trial_id"] for r in rows}) == 2
    assert len({r["trainer.learning_rate"] for r in rows}) == 2  # Optuna proposed two configurations
    assert "test macro-F1=" in proc.stdout and "AUROC=" in proc.stdout


def test_the_console_shows_each_trial_with_its_parameters_and_metric(smoke_run):
    run_dir, proc = smoke_run
    rows = {r["trial_id"]: r for r in csv.DictReader(open(run_dir / "leaderboard.csv"))}
    # The last table of the sweep: a header line, then one row per trial with its sampled values.
    last = proc.stdout.rsplit("[medsweep] 0:", 1)[-1].splitlines()
    assert "trials 2/2 (2 terminated)" in last[0] and "current best val_f1_macro=" in last[0]
    assert last[1].split() == ["trial", "status", "steps", "learning_rate", "warmup_ratio", "val_f1_macro", "evals",
                               "step"]
    for line in last[2:4]:
        trial, status, steps, lr, *_, last_step = line.split()
        assert status == "TERMINATED" and float(lr) == pytest.approx(float(rows[trial]["trainer.learning_rate"]), rel=1e-3)
        # The progress board's last word: 150 steps planned; all of them unless ASHA stopped the trial,
        # and never fewer than its last evaluation's step.
        done, total = (int(n) for n in steps.split("/"))
        assert total == 150 and int(last_step) <= done <= 150
        assert done == 150 or rows[trial]["status"] == "early_stopped"


def test_promoted_model_is_the_best_evaluation_over_all_trials(smoke_run):
    run_dir, _ = smoke_run
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    results = reported_results(run_dir)
    assert len({r["trial_id"] for r in results}) == 2
    best = max(r["val_f1_macro"] for r in results)
    assert metrics["validation"]["val_f1_macro"] == pytest.approx(best)
    winner = [r for r in results if r["val_f1_macro"] == pytest.approx(best)]
    assert (metrics["trial_id"], metrics["validation"]["step"]) in {(r["trial_id"], r["step"]) for r in winner}
    # Test metrics exist only for the promoted model, and are real numbers.
    scalars = {f"test_{n}" for n in metric_names(5) if n != "loss" and not n.startswith("f1_class_")}
    assert set(metrics["test"]) == scalars | {"test_f1_per_class"}
    assert set(metrics["test"]["test_f1_per_class"]) == set(metrics["label_names"])
    assert 0 <= metrics["test"]["test_accuracy"] <= 1
    # 95% bootstrap CIs for every test metric, around the estimate.
    intervals = metrics["test_ci"]["intervals"]
    assert set(intervals) == set(metrics["test"]) and metrics["test_ci"]["resamples"] == 1000
    low, high = intervals["test_f1_macro"]
    assert low <= metrics["test"]["test_f1_macro"] <= high
    matrix = metrics["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == metrics["data_summary"]["split_sizes"]["test"]
    assert metrics["seed_robustness"]["seeds"] == [42] and metrics["config"]["sweep"]["name"] == "smoke"
    assert not any(k.startswith("test_") for r in results for k in r)
    assert set(metrics["data_fingerprints"]) == {"train", "validation", "test"}


def test_promoted_folder_loads_in_a_plain_pipeline_with_label_names(smoke_run):
    from transformers import pipeline

    run_dir, _ = smoke_run
    promoted = run_dir / "promoted"
    assert (promoted / "model.safetensors").exists() and (promoted / "medsweep_config.yaml").exists()
    classify = pipeline("text-classification", model=str(promoted))
    out = classify(["Adenocarcinoma of the colon with hepatic metastases treated by resection.",
                    "Acute myocardial infarction and coronary artery disease in elderly patients."])
    names = set(json.loads((promoted / "metrics.json").read_text())["label_names"])
    assert len(out) == 2 and all(o["label"] in names for o in out)
    assert all(0.0 < o["score"] <= 1.0 for o in out)


def test_single_run_without_sweep_is_one_trial_through_the_same_path(tmp_path):
    run_dir = tmp_path / "single"
    overrides = [o for o in TINY if not o.startswith("cluster.")]
    # The default's seeds (README: `python -m medsweep.run` trains once): one configuration has nothing
    # to choose between, so it is trained once with trainer.seed, and the console says so.
    proc = run_cli(*overrides, "data.max_train_samples=48", "trainer.epochs=1", "cluster.num_cpus=1",
                   "cluster.cpus_per_trial=1", "promote.seeds=[1,2]", f"hydra.run.dir={run_dir}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(run_dir / "leaderboard.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "completed"
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    assert metrics["seed_robustness"]["seeds"] == [42] and not (run_dir / "ray" / "seeds").exists()
    assert metrics["training"] == {"rows": 48, "train_fingerprint": metrics["data_fingerprints"]["train"], "refit": False,
                                   "all_training_rows": 1859, "steps": 3, "epoch": 1.0}
    assert "one configuration, nothing to choose between: no seed re-runs or refit" in proc.stdout


@pytest.mark.slow  # a real Ray sweep of ~20-40 s; keeps the default suite under 10 min (`make test-slow`)
def test_trials_reuse_one_worker_process_and_each_starts_fresh(tmp_path):
    # cluster.reuse_actors (default): three trials through one slot run in one worker process, so
    # torch and transformers are imported once; each trial must still train from its own start.
    import ray

    from medsweep.search import sweep

    config = compose_config(TINY + ["+sweep=smoke", "sweep.num_trials=3", "sweep.max_concurrent=1",
                                    "sweep.scheduler=none", "cluster.num_cpus=1", "trainer.epochs=2",
                                    "data.max_train_samples=48", "data.max_eval_samples=40"], run_dir=tmp_path)
    plan = sweep.preflight(config)
    try:
        results = sweep.run_sweep(plan)
    finally:
        ray.shutdown()
    assert len(results) == 3 and all(r.error is None for r in results)
    assert len({r.metrics["pid"] for r in results}) == 1
    for result in results:
        history = result.metrics_dataframe
        assert history["evaluation"].tolist() == [1, 2]
        assert history["step"].tolist() == [3, 6]  # 48 rows / batch 16 per epoch, from step 0
    # Different sampled learning rates, so three different trainings, not one repeated.
    assert len({r.config["trainer"]["learning_rate"] for r in results}) == 3
