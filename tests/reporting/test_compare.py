"""`python -m medsweep.compare`: two real tiny promoted runs, compared on their shared test split,
and the refusal when the test splits differ."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binomtest

from medsweep.release import layout
from medsweep.promotion.release import promote_checkpoint
from medsweep.reporting import compare
from medsweep.training.trial import run_trial
from tests.conftest import ROOT, TINY, compose_config


def promoted_run(base, overrides):
    """A real tiny trial, its last checkpoint promoted into `base/run`: the run dir."""
    kept = base / "ckpt"

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    run_trial(compose_config(TINY + overrides, run_dir=base), on_evaluation=keep_last)
    promote_checkpoint(kept, base / "run")
    return base / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # A and B differ in training only (learning rate, one epoch less); C is tested on other rows.
    a = promoted_run(tmp_path_factory.mktemp("a"), ["trainer.epochs=1"])
    b = promoted_run(tmp_path_factory.mktemp("b"), ["trainer.learning_rate=1e-4", "trainer.epochs=1"])
    c = promoted_run(tmp_path_factory.mktemp("c"), ["data.seed=7", "trainer.epochs=1"])
    return a, b, c


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "medsweep.compare", *map(str, args)], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_compare_writes_paired_differences_mcnemar_and_a_plot(runs, tmp_path):
    a, b, _ = runs
    proc = cli(a, b, "--out", tmp_path / "cmp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md in proc.stdout
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in compare.HEADLINE:
        assert f"| {name} |" in md
    assert "McNemar" in md

    # The numbers in the table are those of the saved predictions, recomputed here.
    pa, pb = layout.read_test_predictions(a / "promoted"), layout.read_test_predictions(b / "promoted")
    labels = pa["labels"]
    acc_a = float((pa["probs"].argmax(1) == labels).mean())
    acc_b = float((pb["probs"].argmax(1) == labels).mean())
    assert layout.read_metrics(a / "promoted")["test"]["test_accuracy"] == pytest.approx(acc_a)
    assert f"| accuracy | {acc_a:.3f} | {acc_b:.3f} | {acc_b - acc_a:+.3f} |" in md
    right_a, right_b = pa["probs"].argmax(1) == labels, pb["probs"].argmax(1) == labels
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    assert f"{a_only} rows only A gets right, {b_only} only B; p = {p:.3g}" in md


def test_paired_intervals_contain_the_difference_and_decide_significance(runs):
    a, b, _ = runs
    result = compare.compare_pair(compare.load_model(a), compare.load_model(b), n_resamples=300)
    for row in result["metrics"]:
        low, high = row["ci"]
        if np.isfinite(low):
            assert low <= row["difference"] + 1e-9 and row["difference"] - 1e-9 <= high
            assert row["significant"] == (low > 0 or high < 0)
    # A model compared with itself: every paired difference is exactly 0, nothing significant.
    same = compare.compare_pair(compare.load_model(a), compare.load_model(a), n_resamples=100)
    assert all(r["difference"] == 0 and r["ci"] == [0.0, 0.0] and not r["significant"] for r in same["metrics"])
    assert same["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0}


def test_paired_bootstrap_detects_a_real_difference():
    # 400 rows: B right on every row, A on 60% of them. The paired interval of the accuracy
    # difference is far from 0, and B is the better one; ECE (lower is better) names the right side too.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    good = np.full((400, 3), 0.05)
    good[np.arange(400), labels] = 0.9
    bad = good.copy()
    wrong = rng.random(400) < 0.4
    bad[wrong] = np.roll(good[wrong], 1, axis=1)
    model = lambda name, probs: compare.Model(name, None, {}, labels, probs, ["x", "y", "z"])
    result = compare.compare_pair(model("a", bad), model("b", good), n_resamples=300)
    accuracy = next(r for r in result["metrics"] if r["metric"] == "accuracy")
    assert accuracy["significant"] and accuracy["better"] == "B" and accuracy["ci"][0] > 0.3
    assert result["mcnemar"]["a_only"] == 0 and result["mcnemar"]["p_value"] < 1e-20


def test_models_tested_on_different_rows_are_refused_in_one_line(runs, tmp_path, capsys, monkeypatch):
    a, _, c = runs
    monkeypatch.chdir(tmp_path)
    # main() is what `python -m medsweep.compare` exits with (the success path above runs the module).
    assert compare.main([str(a), str(c)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "different test splits" in lines[0]
    assert not (tmp_path / "compare.md").exists()

    assert compare.main([str(a), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]
