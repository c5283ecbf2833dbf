"""Time one trial and measure its peak GPU memory (the numbers in docs/benchmarks.md).

    python experiments/benchmark_trial.py [--random-base SHAPE] [--out FILE] OVERRIDE...

OVERRIDEs are the CLI's (`model=llama3_8b cluster.gpus_per_trial=1 trainer.max_steps=50 ...`); the
trial runs in this process, without Ray, on the config `python -m medsweep.run` would compose, after
the same preflight checks. `--random-base llama3-8b|qwen2.5-0.5b` builds a randomly initialised
model with that architecture (the tiny Llama's tokenizer) and trains on it instead of the Hub
weights: memory and speed depend on the shapes, not on the weight values, and GPU machines without
network access can still be measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

from medsweep.run import compose

# Shapes from the models' published config.json files (attention heads, widths, vocabulary).
SHAPES = {
    "llama3-8b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                      rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                         rms_norm_eps=1e-6, tie_word_embeddings=True)),
}


def build_random_base(shape: str) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medsweep.hf import cache_dir, resolve_model as resolve

    target = cache_dir() / f"random-{shape}"
    if (target / "config.json").exists():
        return target
    config_class, sizes = SHAPES[shape]
    config = getattr(transformers, config_class)(bos_token_id=0, eos_token_id=1, **sizes)
    # On the GPU when there is one: random initialisation of billions of weights is slow on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    staging = target.with_name(target.name + ".tmp")
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(resolve("builtin:tiny-random-llama")).save_pretrained(staging)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the trial's memory peak must not include the builder's copy
    os.replace(staging, target)
    return target


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-base", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, help="append the result as one JSON line to this file")
    args, overrides = parser.parse_known_args(argv)

    from medsweep.config import ConfigError
    from medsweep.search.sweep import preflight
    from medsweep.training.trial import run_trial

    if args.random_base:
        overrides.append(f"model.name_or_path={build_random_base(args.random_base)}")
    config = compose(overrides)  # medsweep.run.compose: what the CLI would build
    try:
        preflight(config)
    except ConfigError as exc:
        sys.exit(f"benchmark: error: {exc}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    result = run_trial(config)
    model, trainer = config["model"], config["trainer"]
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": model["name_or_path"], "random_base": args.random_base, "finetune": model["finetune"],
        "quantization": model["quantization"], "dtype": result["dtype"], "lora": model["lora"],
        "max_length": trainer["max_length"], "batch_size": trainer["batch_size"],
        "gradient_accumulation_steps": trainer["gradient_accumulation_steps"],
        "optimizer_steps": result["history"][-1]["step"],
        "train_samples_per_second": round(result["train_samples_per_second"], 2),
        "trial_seconds": round(time.time() - started, 1),  # model loading and evaluation included
        # Everything the trial held at once: weights, adapter, optimizer state, activations.
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "parameters": result["parameters"],
        "best_val_f1_macro": round(result["best"]["val_f1_macro"], 4),
        "overrides": overrides,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(report) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
