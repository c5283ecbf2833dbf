"""The benchmark scripts' own logic, on the CPU: a GPU session runs them once, and must not find a
broken script or a wrong formula then."""

import sys

import pytest
import torch

from tests.conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "experiments"))
import bench_gpu  # noqa: E402
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
