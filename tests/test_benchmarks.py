"""The benchmark scripts' own logic, on the CPU: a GPU session runs them once, and must not find a
broken script or a wrong formula then."""

import sys

import pytest
import torch

from tests.conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "experiments"))
import bench_gpu  # noqa: E402
import bench_trust  # noqa: E402,F401
import benchmark_trial  # noqa: E402


def test_bert_training_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=500)
    batch, seq_len = 2, 48
    # Eager attention: its matmuls are plain bmm ops that the counter sees.
    model = BertForSequenceClassification(BertConfig(num_labels=3, attn_implementation="eager", **sizes))
    inputs = torch.randint(0, 500, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=inputs, labels=torch.tensor([0, 2])).loss.backward()
    formula = bench_gpu.train_flops_per_sample(64, 2, 256, seq_len) * batch
    # What the formula leaves out (pooler and head: ~h^2 per sample) is under 1% here.
    assert counter.get_total_flops() == pytest.approx(formula, rel=0.02)


def test_mfu_times_real_training_steps():
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    row = bench_gpu.mfu(sizes, batch=2, seq_len=16, steps=2, dtype=torch.float32, peak=1.0)
    flops = bench_gpu.train_flops_per_sample(32, 1, 64, 16) * 2
    assert row["achieved_tflops"] == pytest.approx(flops / row["step_seconds"] / 1e12, abs=0.01)
    assert row["samples_per_second"] == pytest.approx(2 / row["step_seconds"], rel=0.01)
    # Peak 1 TFLOP/s: mfu is the achieved TFLOP/s, up to their rounding (3 vs 2 decimals: 0.0012 -> 0.001 vs 0.0).
    assert row["mfu"] == pytest.approx(row["achieved_tflops"], abs=0.005)
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and bench_gpu.peak_tflops("Tesla T4") is None


def test_benchmark_trial_reports_a_real_trial(tmp_path):
    out = tmp_path / "bench.jsonl"
    overrides = [o for o in TINY if not o.startswith("promote.")]
    report = benchmark_trial.main(["--out", str(out), *overrides, "trainer.max_steps=3", "trainer.eval_every_steps=3"])
    assert report["optimizer_steps"] == 3 and report["dtype"] == "float32" and report["device"] == "cpu"
    assert report["train_samples_per_second"] > 0 and report["peak_gpu_memory_gib"] is None
    assert out.read_text().count("\n") == 1


@pytest.mark.slow  # a real Ray sweep, ~30 s: `make test-slow`
def test_sweep_samples_counts_every_trials_training(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    overrides = TINY + ["+sweep=smoke", "sweep.num_trials=2", "sweep.max_concurrent=2", "sweep.scheduler=none",
                        "data.max_train_samples=48", "trainer.epochs=1", "cluster.num_cpus=2", "promote.enabled=false"]
    samples, seconds, trials = bench_gpu.sweep_samples(overrides)
    # 48 rows at batch 16: 3 optimizer steps x 16 samples in each of the 2 trials.
    assert (samples, trials) == (2 * 48, 2) and seconds > 0


def test_bench_trust_scores_what_promotion_would_publish_on_synthetic_scores(tmp_path):
    """bench_trust's fitting and scoring (its training is MiniLM on real data: minutes, run by hand):
    over-confident logits are calibrated, and both fits report coverage near nominal."""
    import numpy as np
    import pandas as pd


    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
        return logits * 4.0, labels  # 4x over-confident

    scores = {"validation": split(600), "calibration": split(600), "test": split(3000)}
    row = bench_trust.fit_and_score(scores, "calibration", ["a", "b", "c"], fit_seed=1, share=0.8)
    assert row["rows"] == 480 and 2.0 < row["temperature"] < 6.0  # over-confident: T well above 1
    assert row["ece_after"] < 0.5 * row["ece_before"] and row["ece_ratio"] < 0.5
    for level in bench_trust.LEVELS:
        assert abs(row[f"coverage_{level:.2f}"] - level) < 0.03 and row[f"set_size_{level:.2f}"] >= 1.0
    low, high = row["f1_gain_ci"]
    assert low <= row["f1_gain"] <= high
    overrides = bench_trust.imbalanced_medical_abstracts(tmp_path, seed=0)
    written = pd.read_csv(overrides[1].split("=", 1)[1])
    counts = written["condition_label"].value_counts().to_list()
    assert counts[0] == 961 and counts[-1] < 0.1 * counts[0]
