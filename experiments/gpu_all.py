"""Every GPU measurement of issue 19 in one run, for a GPU session that has minutes, not hours.

    python experiments/gpu_all.py --out $OUT                 # one H100/H200: ~10 min, JSON under $OUT
    python experiments/gpu_all.py --out $OUT --only mfu,probe
    python experiments/gpu_all.py --tiny --out /tmp/gpu_all  # the same code paths on a CPU, tiny models

Sections, in this order (most wanted first, so a run cut short by the time limit loses the least):

    env         device, torch/CUDA versions, bf16, bitsandbytes and flash-attn, which Hub weights are cached
    probe       cluster.gpus_per_trial=auto's memory probe (MiniLM at 32 x 512; Qwen2.5-0.5B 4-bit), the share it picks
    mfu         BERT-base shape, bf16, 32 x 512: achieved / peak FLOP/s; fused vs foreach AdamW; fp32 (TF32)
    throughput  a medsweep trial (MiniLM, 512 tokens): bf16 vs fp32 samples/s, peak memory vs the probe's
    packing     4 MiniLM trials side by side (gpus_per_trial=auto, which picks 0.25) vs one at a time, aggregate samples/s
    qlora       Qwen2.5-0.5B (Hub weights if cached, else a random base of the same shape): bf16 LoRA vs 4-bit
    qlora_e2e   a 4-bit Qwen sweep that promotes; the promoted folder through load_promoted, medsweep.predict and
                medsweep.serve (a real server on 127.0.0.1), each compared with the probabilities saved at promotion
    switches    the throughput switches one at a time: attention eager vs SDPA (vs flash-attn 2), torch.compile,
                data loader workers (cluster.cpus_per_trial=1 vs 4)
    llama8b     Llama-3-8B shape (random base), QLoRA: samples/s and peak memory

Each section is guarded: an error is recorded in its JSON and the next section runs. Results go to
<out>/gpu_all.json (rewritten after every section) and <out>/<section>.json. `--budget-s` (default
540) skips a section whose usual duration no longer fits, so the JSON is complete before an outer
600 s limit. There is no network on the GPU machine: real weights are used only if already cached.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import bench_gpu  # noqa: E402
import benchmark_trial  # noqa: E402

QWEN_HUB = "Qwen/Qwen2.5-0.5B-Instruct"
LLAMA_HUB = "meta-llama/Meta-Llama-3-8B-Instruct"


class Run:
    """Settings shared by the sections: full size on a GPU, tiny models and rows with --tiny."""

    def __init__(self, args):
        self.tiny, self.out = args.tiny, args.out
        self.cuda = torch.cuda.is_available()
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_all-"))
        if self.tiny:
            self.encoder = ["model=tiny_random"]
            self.decoder = ["model=tiny_random_llama"]
            self.common = ["data.max_train_samples=32", "data.max_eval_samples=16", "trainer.epochs=1", "trainer.max_length=32",
                           "trainer.batch_size=8", "trainer.eval_batch_size=16", "cluster.cpus_per_trial=1"]
            self.decoder_common = self.common + ["trainer.max_steps=2", "trainer.eval_every_steps=2", "trainer.group_by_length=false"]
        else:
            self.encoder = bench_gpu.MINILM
            self.decoder = ["model=qwen2_5_0_5b"]
            # The issue-9 throughput settings: 1,000 abstracts at 512 tokens, batch 32, one epoch.
            self.common = ["data.max_train_samples=1000", "data.max_eval_samples=200", "trainer.epochs=1",
                           "trainer.max_length=512", "trainer.batch_size=32", "trainer.eval_batch_size=64",
                           "cluster.cpus_per_trial=4"]
            # docs/benchmarks.md's QLoRA table: 40 steps of 8 x 128 tokens.
            self.decoder_common = ["data.max_train_samples=512", "data.max_eval_samples=128", "trainer.max_steps=40",
                                   "trainer.eval_every_steps=40", "trainer.batch_size=8", "trainer.eval_batch_size=32",
                                   "trainer.gradient_accumulation_steps=1", "trainer.max_length=128",
                                   "trainer.group_by_length=false", "cluster.cpus_per_trial=4"]
        self.gpu = [f"cluster.gpus_per_trial={1 if self.cuda else 0}"]

    def can_4bit(self) -> str | None:
        """Why 4-bit cannot run here, or None."""
        if not self.cuda:
            return "4-bit needs a CUDA GPU"
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "bitsandbytes is not installed (pip install -e '.[qlora]')"
        return None

    def qwen(self) -> tuple[list[str], str]:
        """The Qwen overrides: the Hub weights if cached (no network here), else a random base of the same shape."""
        if self.tiny:
            return self.decoder, "builtin tiny random Llama"
        if cached(QWEN_HUB):
            return self.decoder, "hub weights (cached)"
        return self.decoder + [f"model.name_or_path={benchmark_trial.build_random_base('qwen2.5-0.5b')}"], "random base, same shape"


def cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def trial(overrides: list[str], random_base: str | None = None) -> dict:
    """One medsweep trial in this process (experiments/benchmark_trial.py): samples/s, peak memory."""
    argv = (["--random-base", random_base] if random_base else []) + overrides
    return benchmark_trial.main(argv)


# --- sections ---------------------------------------------------------------------------------------

def section_env(run: Run) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": run.cuda, "tiny": run.tiny, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    import transformers

    info["transformers"] = transformers.__version__
    if run.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, device_count=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=list(torch.cuda.get_device_capability()), bf16=torch.cuda.is_bf16_supported())
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = repr(exc)
    for package in ("bitsandbytes", "flash_attn", "peft", "ray"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    info["cached_weights"] = {repo: cached(repo) for repo in (QWEN_HUB, LLAMA_HUB)}
    info["cpus"] = os.cpu_count()
    return info


def probe_one(run: Run, overrides: list[str], run_dir: Path) -> dict:
    """cluster.gpus_per_trial=auto exactly as a sweep resolves it, with the probe in this process."""
    from medsweep.run import compose
    from medsweep.search import resources

    config = compose(overrides + ["cluster.gpus_per_trial=auto", "sweep.max_concurrent=4"], run_dir)
    memory = None if run.cuda else resources.ProcessMemory()
    share = resources.resolve_gpus_per_trial(
        config, probe=lambda probed: resources.measure_peak_memory(probed, memory=memory),
        gpus=lambda: float(torch.cuda.device_count()) if run.cuda else 1.0)
    return {"gpus_per_trial": share, **json.loads((run_dir / resources.PROBE_FILE).read_text())}


def section_probe(run: Run) -> dict:
    # lr_full's space with its batch choice topped at the throughput trial's batch: the probe's shape (the
    # space's largest) is then exactly the throughput section's trial, whose real peak checks the margin.
    batch = 8 if run.tiny else 32
    space = ["+sweep=lr_full", f"sweep.search_space.trainer.batch_size.values=[{batch // 2},{batch}]"]
    results = {"minilm_lr_full": probe_one(run, run.encoder + run.common + space, run.scratch / "probe_minilm")}
    why_not = run.can_4bit()
    if why_not:
        results["qwen_4bit"] = {"skipped": why_not}
    else:
        qwen, source = run.qwen()
        results["qwen_4bit"] = {"base": source, **probe_one(run, qwen + run.decoder_common + ["+sweep=lr_lora_decoder",
                                                                                              "model.quantization=4bit"],
                                                             run.scratch / "probe_qwen")}
    return results


def section_mfu(run: Run) -> dict:
    if run.tiny:
        sizes, batch, seq_len, steps = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=100), 2, 16, 2
    else:
        sizes, batch, seq_len, steps = bench_gpu.BERT_BASE, 32, 512, 20
    peak = bench_gpu.peak_tflops(torch.cuda.get_device_name()) if run.cuda else None
    if run.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 row is what medsweep runs in fp32 (TF32 on Ampere+)
        torch.backends.cudnn.allow_tf32 = True
    rows = {"bf16_fused": bench_gpu.mfu(sizes, batch, seq_len, steps, torch.bfloat16, peak, fused=True),
            "bf16_foreach": bench_gpu.mfu(sizes, batch, seq_len, steps, torch.bfloat16, peak, fused=False),
            "fp32_tf32_fused": bench_gpu.mfu(sizes, batch, seq_len, steps, torch.float32, peak, fused=True)}
    for name, row in rows.items():
        print(f"mfu {name}: {row['samples_per_second']} samples/s, {row['achieved_tflops']} TFLOP/s, mfu={row['mfu']}")
    rows["fused_vs_foreach"] = rows["bf16_fused"]["samples_per_second"] / rows["bf16_foreach"]["samples_per_second"]
    rows["bf16_vs_fp32"] = rows["bf16_fused"]["samples_per_second"] / rows["fp32_tf32_fused"]["samples_per_second"]
    return rows


def section_throughput(run: Run) -> dict:
    result = bench_gpu.throughput(run.common, model=run.encoder)
    probe = run.out / "probe.json"
    if run.cuda and probe.exists() and json.loads(probe.read_text()).get("status") == "ok":
        # The same shape as the probe (section probe): how far a whole trial's peak went past the probe's.
        probed = json.loads(probe.read_text())["result"]["minilm_lr_full"]["probe"]
        trial_peak = result["bf16"]["peak_gpu_memory_gib"] * 2**30
        result["trial_peak_over_probe_peak"] = {"allocated": trial_peak / probed["peak_allocated_bytes"],
                                                "vs_reserved": trial_peak / probed["peak_reserved_bytes"],
                                                "probe_dtype": probed["dtype"], "margin": 0.2}
    print(f"throughput ratio (bf16 / fp32)={result['ratio']:.2f}")
    return result


def section_packing(run: Run) -> dict:
    cpus = ["cluster.cpus_per_trial=1", "cluster.num_cpus=2"] if run.tiny else ["cluster.cpus_per_trial=3"]
    result = bench_gpu.packing(run.common + cpus, 4 if not run.tiny else 2, model=run.encoder, packed_share="auto",
                               alone_share="1" if run.cuda else "0", keep_dir=run.scratch / "packing")
    print(f"packing ratio (auto-packed / 1 per GPU)={result['ratio']:.2f}")
    return result


def section_qlora(run: Run) -> dict:
    qwen, source = run.qwen()
    rows = {"base": source, "bf16_lora": trial(qwen + run.decoder_common + run.gpu)}
    why_not = run.can_4bit()
    rows["4bit"] = {"skipped": why_not} if why_not else trial(qwen + run.decoder_common + run.gpu + ["model.quantization=4bit"])
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_probabilities(promoted: Path, texts: list[str], labels: list[str]):
    """The promoted model behind a real medsweep.serve on 127.0.0.1: POST /predict, 32 texts a request."""
    import numpy as np

    from medsweep.serving import serve

    port, token = free_port(), "gpu-all-" + "x" * 32
    env = {**os.environ, serve.TOKEN_ENV: token, "PYTHONPATH": str(ROOT)}
    log = open(Path(promoted).parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "medsweep.serve", f"model={promoted}", "host=127.0.0.1", f"port={port}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("medsweep.serve did not come up: " + Path(log.name).read_text()[-500:]) from None
                time.sleep(0.5)
        rows = []
        for start in range(0, len(texts), 32):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", method="POST",
                                             data=json.dumps({"texts": texts[start:start + 32]}).encode(),
                                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            body = json.loads(urllib.request.urlopen(request, timeout=120).read())
            rows += [[p["probabilities"][name] for name in labels] for p in body["predictions"]]
        return np.array(rows)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def section_qlora_e2e(run: Run) -> dict:
    """Train and promote through the CLI's own execute(); then every way of loading the promoted folder
    must give the probabilities promotion saved for the test split (test_predictions.npz)."""
    import numpy as np
    import pandas as pd
    import ray

    from medsweep import data
    from medsweep.release import layout
    from medsweep.run import compose, execute
    from medsweep.serving import predict
    from medsweep.serving.inference import load_promoted

    qwen, source = run.qwen()
    why_not = run.can_4bit()
    quantization = "none" if why_not else "4bit"
    run_dir = run.scratch / "qlora_e2e"
    overrides = (qwen + run.decoder_common + ["+sweep=lr_lora_decoder", f"model.quantization={quantization}",
                 "sweep.num_trials=2", "sweep.max_concurrent=2", "promote.top_k=1", "promote.seeds=[]",
                 "promote.bootstrap_resamples=100", "tracker=none",
                 "cluster.gpus_per_trial=auto" if run.cuda else "cluster.gpus_per_trial=0"]
                 + (["cluster.cpus_per_trial=1", "cluster.num_cpus=2"] if run.tiny else ["cluster.cpus_per_trial=3"]))
    config = compose(overrides, run_dir)
    started = time.time()
    execute(config)
    ray.shutdown()
    sweep_seconds = time.time() - started
    promoted = run_dir / "promoted"
    saved = layout.read_test_predictions(promoted)
    settings = layout.read_settings(promoted)
    test = data.load_splits(config["data"]).test
    texts = test["text"].tolist()
    loaded = load_promoted(promoted).predict(texts)
    csv_in, csv_out = run_dir / "test_texts.csv", run_dir / "predictions.csv"
    pd.DataFrame({settings.text_column: texts}).to_csv(csv_in, index=False)  # the column the model was trained on
    if predict.main([f"model={promoted}", f"input={csv_in}", f"output={csv_out}"]) != 0:
        raise RuntimeError("medsweep.predict failed (its one-line error is above)")
    table = pd.read_csv(csv_out)
    predicted = table[[f"{predict.PROB_PREFIX}{name}" for name in settings.label_names]].to_numpy()
    served = serve_probabilities(promoted, texts, settings.label_names)
    at_promotion = saved["probs"]

    def gap(probs) -> float:
        return float(np.abs(np.asarray(probs) - at_promotion).max())

    result = {"base": source, "quantization": quantization, "why_not_4bit": why_not, "layout": settings.layout,
              "promoted_files": sorted(p.name for p in settings.folder.iterdir()), "test_rows": len(texts),
              "sweep_seconds": round(sweep_seconds, 1), "max_abs_diff": {"load_promoted": gap(loaded), "predict": gap(predicted),
                                                                        "serve": gap(served)},
              "test_metrics": {k: v for k, v in layout.read_metrics(promoted)["test"].items() if k in ("test_accuracy", "test_f1_macro")},
              "gpu_probe": json.loads((run_dir / "gpu_probe.json").read_text()) if (run_dir / "gpu_probe.json").exists() else None}
    # Same weights, same inputs, same batching: only kernel non-determinism may differ (bf16 on a GPU).
    result["same_probabilities"] = all(value <= 1e-3 for value in result["max_abs_diff"].values())
    print(f"promoted {quantization} {settings.layout} folder: max |p - p_promotion| = {result['max_abs_diff']}")
    return result


def section_switches(run: Run) -> dict:
    """Each throughput switch against the default trial (bf16 where the GPU has it, SDPA, no compile,
    loader workers from cluster.cpus_per_trial)."""
    base = run.encoder + run.common + run.gpu + (["model.dtype=bfloat16"] if run.cuda else [])
    variants = {"default": [], "attention_eager": ["model.attn_implementation=eager"],
                "loader_no_workers": ["cluster.cpus_per_trial=1"]}
    try:
        import flash_attn  # noqa: F401

        variants["flash_attention_2"] = ["model.attn_implementation=flash_attention_2"]
    except ImportError:
        pass
    if not run.tiny:  # compiling a tiny model on a CPU measures the compiler, nothing else
        variants["torch_compile"] = ["trainer.torch_compile=true"]  # last: recompiles for new lengths, the slowest
    rows = {}
    for name, extra in variants.items():
        try:
            rows[name] = trial(base + extra)
        except (Exception, SystemExit) as exc:  # one switch failing (flash-attn on BERT, say) must not cost the others
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        write_json(run.out / "switches.partial.json", rows)  # what is done survives an outer time limit
    default = rows["default"]["train_samples_per_second"]
    rows["ratio_to_default"] = {name: round(row["train_samples_per_second"] / default, 3)
                                for name, row in rows.items() if isinstance(row, dict) and "train_samples_per_second" in row}
    return rows


def section_llama8b(run: Run) -> dict:
    if run.tiny:
        return {"skipped": "--tiny: an 8B model does not fit the point of a CPU check"}
    why_not = run.can_4bit()
    if why_not:
        return {"skipped": why_not}
    hub = cached(LLAMA_HUB)
    return {"base": "hub weights (cached)" if hub else "random base, same shape",
            "4bit": trial(["model=llama3_8b"] + run.decoder_common + run.gpu, random_base=None if hub else "llama3-8b")}


# Name, function, usual seconds on one H100/H200 (what --budget-s compares with the time left).
SECTIONS = [("env", section_env, 10), ("probe", section_probe, 60), ("mfu", section_mfu, 40),
            ("throughput", section_throughput, 100), ("packing", section_packing, 150), ("qlora", section_qlora, 90),
            ("qlora_e2e", section_qlora_e2e, 120), ("switches", section_switches, 150), ("llama8b", section_llama8b, 200)]


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    parser.add_argument("--tiny", action="store_true", help="tiny models and rows: check the code paths on a CPU")
    parser.add_argument("--only", default="", help="comma-separated section names (default: all)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip sections that no longer fit (default 540)")
    args = parser.parse_args(argv)
    names = [name for name, _, _ in SECTIONS]
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(names):
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on the GPU machine: fail fast, never hang
    run = Run(args)
    started = time.time()
    summary = {"command": " ".join(["python", "experiments/gpu_all.py", *(argv if argv is not None else sys.argv[1:])]),
               "tiny": args.tiny, "sections": {}}
    for name, function, usual in SECTIONS:
        if only and name not in only:
            continue
        left = args.budget_s - (time.time() - started)
        if not args.tiny and usual > left:
            record = {"status": "skipped", "reason": f"needs ~{usual} s, {left:.0f} s of --budget-s left"}
        else:
            print(f"=== {name}", flush=True)
            t0 = time.time()
            try:
                record = {"status": "ok", "result": function(run)}
            except (Exception, SystemExit) as exc:  # one broken section must not lose the others' numbers
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
                print(f"=== {name} failed: {record['error']}", flush=True)
            record["seconds"] = round(time.time() - t0, 1)
            cleanup()
        summary["sections"][name] = record
        summary["elapsed_s"] = round(time.time() - started, 1)
        write_json(args.out / f"{name}.json", record)
        write_json(args.out / "gpu_all.json", summary)
    # Run dirs, checkpoints and Ray results of the sweeps: the numbers are in the JSON, and $OUT must stay small.
    shutil.rmtree(run.scratch, ignore_errors=True)
    statuses = {name: record["status"] for name, record in summary["sections"].items()}
    print(f"gpu_all: {statuses} in {summary['elapsed_s']} s; results in {args.out / 'gpu_all.json'}", flush=True)
    return summary


def cleanup() -> None:
    """Between sections: no Ray left running, no GPU memory held for the next section's peak."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
