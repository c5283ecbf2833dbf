"""GPU benchmarks (issue 9, item 5): bf16 vs fp32 trial throughput, fractional packing, and model FLOPs
utilization of a BERT-base-shaped model. Each part prints its side-by-side numbers and a ratio.

    python experiments/bench_gpu.py throughput     # a medsweep trial, MiniLM, 512 tokens: bf16 vs fp32 samples/s
    python experiments/bench_gpu.py packing        # 4 trials at cluster.gpus_per_trial=0.25 vs one at a time on 1.0
    python experiments/bench_gpu.py mfu            # BERT-base shape, bf16, 512 tokens: achieved / peak FLOP/s
    python experiments/bench_gpu.py all

`--peak-tflops` overrides the dense bf16 peak used for MFU (default: looked up from the GPU's name).
Everything also runs on a CPU (slowly, and the numbers mean nothing there); tests/test_benchmarks.py
checks the FLOP count and the code paths on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_trial  # noqa: E402  (the one-trial timer next to this file)

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522)
MINILM = ["model=minilm"]  # the embedded all-MiniLM-L6-v2


def train_flops_per_sample(hidden: int, layers: int, intermediate: int, seq_len: int) -> float:
    """Matmul FLOPs of one training step per sample for a BERT encoder: forward 2 FLOPs per weight per
    token (Q, K, V, O: 4h^2; feed-forward: 2 h ff) plus attention (QK^T and AV: 2 x 2 seq h per token),
    backward twice the forward. Embedding lookups, norms, softmax and the small head are left out (< 1%)."""
    per_token_forward = layers * (2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * seq_len * hidden)
    return 3.0 * per_token_forward * seq_len


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def mfu(sizes: dict, batch: int, seq_len: int, steps: int, dtype: torch.dtype, peak: float | None,
        fused: bool | None = None) -> dict:
    """Time `steps` full training steps (forward, backward, AdamW) of a randomly initialised BERT of
    these sizes on full-length inputs (no padding: every token is real work). `fused`: AdamW's fused
    kernel (True), its per-tensor foreach loop (False) or torch's default (None)."""
    from transformers import BertConfig, BertForSequenceClassification

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # this run's peak, not an earlier run's in the same process
    config = BertConfig(max_position_embeddings=max(512, seq_len), num_labels=5, **sizes)
    model = BertForSequenceClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **({} if fused is None else {"fused": fused, "foreach": not fused}))
    inputs = torch.randint(0, sizes["vocab_size"], (batch, seq_len), device=device)
    labels = torch.randint(0, 5, (batch,), device=device)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernel selection, allocator
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    flops = train_flops_per_sample(sizes["hidden_size"], sizes["num_hidden_layers"], sizes["intermediate_size"], seq_len) * batch
    achieved = flops / seconds / 1e12
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype).split(".")[-1],
            "batch": batch, "seq_len": seq_len, "step_seconds": round(seconds, 6),
            "samples_per_second": round(batch / seconds, 1), "achieved_tflops": round(achieved, 2),
            "peak_tflops": peak, "mfu": round(achieved / peak, 3) if peak else None, "fused_adamw": fused,
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}


def throughput(common: list[str], model: list[str] = MINILM) -> dict:
    """The same medsweep trial in fp32 and in bf16 (autocast), in this process, one after the other."""
    gpu = [f"cluster.gpus_per_trial={1 if torch.cuda.is_available() else 0}"]
    rows = {dtype: benchmark_trial.main(model + common + gpu + [f"model.dtype={dtype}"]) for dtype in ("float32", "bfloat16")}
    fp32, bf16 = rows["float32"]["train_samples_per_second"], rows["bfloat16"]["train_samples_per_second"]
    print(f"medsweep trial, MiniLM: fp32 {fp32:.1f} samples/s, bf16 {bf16:.1f} samples/s")
    return {"fp32": rows["float32"], "bf16": rows["bfloat16"], "ratio": bf16 / fp32}


def sweep_samples(overrides: list[str], keep_dir: Path | None = None) -> tuple[int, float, int]:
    """Training samples of all trials of a whole sweep, its wall time, and its number of trials.
    `keep_dir`: run the sweep there and keep it (gpu_probe.json, the leaderboard), else a temporary one."""
    import ray

    from medsweep.reporting.run_data import load_trials
    from medsweep.run import compose, execute

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = str(keep_dir or scratch)
        config = compose(overrides, run_dir)
        started = time.time()
        execute(config)
        seconds = time.time() - started
        ray.shutdown()
        trials = load_trials(Path(run_dir) / "ray" / "sweep")
    # Each trial's last report: optimizer steps x effective batch (a short last batch counts as full:
    # the same small overcount on both sides of a ratio).
    last = [trial.history.iloc[-1] for trial in trials]
    trained = sum(int(r["step"] * r["batch_size"] * r["gradient_accumulation_steps"]) for r in last)
    return trained, seconds, len(trials)


def packing(common: list[str], per_gpu: int, model: list[str] = MINILM, packed_share: str | None = None,
            alone_share: str = "1", keep_dir: Path | None = None) -> dict:
    """`per_gpu` trials side by side on one GPU (cluster.gpus_per_trial=`packed_share`, default 1/per_gpu;
    "auto" lets the memory probe choose) vs the same trials one at a time on the whole GPU."""
    base = model + common + ["+sweep=lr_full", f"sweep.num_trials={per_gpu}", "sweep.scheduler=none",
                             "promote.enabled=false", "tracker=none"]
    packed_dir = keep_dir / "packed" if keep_dir else None
    samples, seconds, n_packed = sweep_samples(base + [f"sweep.max_concurrent={per_gpu}",
                                                       f"cluster.gpus_per_trial={packed_share or 1 / per_gpu}"], packed_dir)
    packed = samples / seconds  # aggregate: every trial's samples over the sweep's wall time
    samples, seconds, n_alone = sweep_samples(base + ["sweep.max_concurrent=1", f"cluster.gpus_per_trial={alone_share}"])
    alone = samples / seconds
    print(f"{per_gpu} trials packed on one GPU: {packed:.1f} samples/s in all; one at a time: {alone:.1f} samples/s")
    probe = packed_dir / "gpu_probe.json" if packed_dir else None
    return {"packed": packed, "one_at_a_time": alone, "trials": [n_packed, n_alone], "ratio": packed / alone,
            "packed_share": packed_share or 1 / per_gpu,
            "gpu_probe": json.loads(probe.read_text()) if probe and probe.exists() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["throughput", "packing", "mfu", "all"])
    parser.add_argument("--per-gpu", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="append the results as one JSON line to this file")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    common = ["data.max_train_samples=1000", "data.max_eval_samples=200", "trainer.epochs=1", "trainer.max_length=512",
              "trainer.batch_size=32", "trainer.eval_batch_size=64", "cluster.cpus_per_trial=2"]
    results = {}
    if args.part in ("throughput", "all"):
        results["throughput"] = throughput(common)
        print(f"throughput ratio (bf16 / fp32)={results['throughput']['ratio']:.2f}")
    if args.part in ("packing", "all"):
        results["packing"] = packing(common, args.per_gpu)
        print(f"packing ratio ({args.per_gpu} per GPU / 1 per GPU)={results['packing']['ratio']:.2f}")
    if args.part in ("mfu", "all"):
        peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if cuda else None)
        results["mfu"] = mfu(BERT_BASE, batch=32, seq_len=512, steps=args.steps, dtype=torch.bfloat16, peak=peak)
        print(json.dumps(results["mfu"]))
        if results["mfu"]["mfu"] is not None:
            print(f"mfu={results['mfu']['mfu']:.3f}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(results, default=str) + "\n")


if __name__ == "__main__":
    main()
