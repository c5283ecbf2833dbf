"""A text-pair data set (the shipped PubMedQA) through the CLI and Ray Tune: it trains, its split
fingerprints follow every trial to the promoted model, no text is written anywhere in the run dir,
and a later run that fails validation leaves this run's results exactly as they were."""

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

from medsweep import data
from medsweep.search import driver
from tests.conftest import compose_config, run_cli

OVERRIDES = [
    "+sweep=imbalance", "data=pubmedqa", "model=tiny_random", "sweep.num_trials=2", "sweep.max_concurrent=2",
    "sweep.search_space.trainer.learning_rate={type: loguniform, lower: 1.0e-3, upper: 5.0e-3}",
    "data.max_train_samples=48", "data.max_eval_samples=30", "trainer.epochs=2", "trainer.max_length=48",
    "trainer.eval_batch_size=128", "cluster.cpus_per_trial=1",
]


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pubmedqa") / "run"
    proc = run_cli(*OVERRIDES, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file's hash and every link's target under the run dir."""
    state = {}
    for path in sorted(run_dir.rglob("*")):
        if path.name == driver.LOCK_FILE:  # who last drove this run dir (pid, start time), not a result
            continue
        key = str(path.relative_to(run_dir))
        if path.is_symlink():
            state[key] = "-> " + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def test_pair_sweep_searches_imbalance_settings_and_prints_the_summary(pair_run):
    run_dir, proc = pair_run
    rows = list(csv.DictReader(open(run_dir / "leaderboard.csv")))
    assert len(rows) == 2 and {"trainer.class_weighting", "trainer.oversample"} <= set(rows[0])
    assert {r["trainer.class_weighting"] for r in rows} <= {"none", "balanced"}
    assert "[medsweep] data: 1000 rows read" in proc.stdout and "(split: split_column)" in proc.stdout
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert summary["split_sizes"]["test"] == 500 and summary["class_counts"]["test"] == {"maybe": 55, "no": 169, "yes": 276}
    for name in ("train", "validation", "test"):
        assert f"fingerprint {summary['fingerprints'][name]}" in proc.stdout


def test_fingerprints_are_recorded_with_every_trial_and_the_promoted_model(pair_run):
    run_dir, _ = pair_run
    expected = json.loads((run_dir / "data_summary.json").read_text())["fingerprints"]
    checkpoints = list((run_dir / "ray" / "sweep").glob("*/checkpoint_*/trial.json"))
    assert len(checkpoints) == 2  # one kept checkpoint per trial
    assert all(json.loads(p.read_text())["data_fingerprints"] == expected for p in checkpoints)
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    # The search trained on 48 rows; the promoted model is their refit on every training row
    # (promote.refit): same validation and test split, the whole training split.
    full = data.load_splits(compose_config(OVERRIDES + ["data.max_train_samples=null"])["data"]).fingerprints
    assert full["validation"] == expected["validation"] and full["test"] == expected["test"] and full["train"] != expected["train"]
    assert metrics["data_fingerprints"] == full
    assert metrics["training"]["search_train_fingerprint"] == expected["train"]
    assert metrics["data_summary"]["fingerprints"] == full  # the splits it was trained and scored on


def test_no_text_from_the_data_is_written_to_the_run_dir_or_printed(pair_run):
    run_dir, proc = pair_run
    splits = data.load_splits(compose_config(OVERRIDES)["data"])
    samples = [splits.train["text"].iloc[0], splits.validation["text"].iloc[0], splits.test["text"].iloc[0],
               splits.test["text_pair"].iloc[0][:80]]
    assert all(len(s) > 40 for s in samples)
    written = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "leaderboard.csv" for p in written) and any(p.name == "metrics.json" for p in written)
    for path in written:
        content = path.read_bytes()
        assert not any(s.encode() in content for s in samples), path
    assert not any(s in proc.stdout + proc.stderr for s in samples)


@pytest.mark.parametrize("bad", [
    ["data.path=/nonexistent/notes.jsonl"],  # a data error, found after Hydra has set up the run dir
    ["trainer.learning_rate=0"],  # a config error
])
def test_a_failed_rerun_in_the_same_dir_leaves_the_earlier_results_intact(pair_run, bad):
    run_dir, _ = pair_run
    before = snapshot(run_dir)
    assert {"leaderboard.csv", "data_summary.json", ".hydra/config.yaml", "promoted"} <= set(before)
    proc = run_cli(*OVERRIDES, *bad, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert snapshot(run_dir) == before
