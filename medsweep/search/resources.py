"""What each trial asks Ray for: `cluster.gpus_per_trial=auto` packs trials onto GPUs by measurement.

Ray only books fractional GPUs; it does not split their memory. So before the sweep one short probe
trains a few steps (and runs one evaluation batch) at the largest shape the search space can draw
(batch_size x max_length, the widest LoRA), on a whole GPU of the cluster, through a trial's own
Trainer (training.trial.build_trainer), and reads the peak memory PyTorch's caching allocator
reserved. The share is then the largest 1/n such that n trials fit on one GPU with a margin:

    n = floor(total GPU memory / (peak reserved x (1 + MARGIN) + the CUDA context))

capped so that `sweep.max_concurrent` trials spread over the cluster's GPUs before they share one
(two trials on two GPUs are faster than two on one). The choice and the probe's numbers are
printed and written to <run dir>/gpu_probe.json. Without a GPU in the cluster, auto means 0.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from medsweep.config import ConfigError
from medsweep.search.space import flatten

GIB = 2**30
# Headroom on the probe's peak reserved memory, per trial. The probe is a few steps at one fixed
# shape; a real trial runs thousands at varying padded lengths (dynamic padding), so the caching
# allocator fragments further and its reserved pool grows past what the probe saw (PyTorch's
# allocator notes put fragmentation overhead in the 10-30% range for variable shapes). 20% covers
# that without halving the packing of a small model; a trial that still runs out of memory halves
# its batch and continues (medsweep.training.trial.fit), it does not fail.
MARGIN = 0.20
# Each trial is its own process with its own CUDA context (kernels, cuBLAS/cuDNN handles), outside
# PyTorch's allocator: ~0.5 GiB on Hopper with lazy module loading. The probe measures it where it
# can (device memory in use before the model is built); this is the floor when the reading is lower.
CONTEXT_BYTES = GIB // 2
PROBE_FILE = "gpu_probe.json"
# Search dimensions that change a trial's peak memory, and which of their values is the largest.
PROBED = ("trainer.batch_size", "trainer.max_length", "trainer.eval_batch_size", "model.lora.r",
          "model.lora.target_modules", "model.finetune")


def widest(path: str, spec: dict):
    """The value of one search dimension that needs the most memory."""
    if spec["type"] != "choice":
        return spec["upper"]
    values = spec["values"]
    if path == "model.lora.target_modules":
        # all-linear adapts every projection: the most adapter weights, gradients and Adam state.
        return "all-linear" if "all-linear" in values else max(values, key=lambda v: len(str(v).split(",")))
    if path == "model.finetune":
        return "full" if "full" in values else values[0]
    return max(values)


def largest_shape(config: dict) -> dict[str, object]:
    """{config path: value} of the memory-relevant settings at their largest over the search space."""
    leaves = flatten(config["sweep"]["search_space"])
    shape = {}
    for path in PROBED:
        section, *rest = path.split(".")
        node = config[section]
        for part in rest[:-1]:
            node = node[part]
        shape[path] = widest(path, leaves[path]) if path in leaves else node[rest[-1]]
    return shape


def probe_config(config: dict) -> dict:
    """The config of the probe: the base config with the largest shape written in."""
    probed = copy.deepcopy(config)
    for path, value in largest_shape(config).items():
        section, *rest = path.split(".")
        node = probed[section]
        for part in rest[:-1]:
            node = node[part]
        node[rest[-1]] = value
    return probed


class CudaMemory:
    """Reads the probe's memory from PyTorch's CUDA allocator (the GPU the process was given)."""

    def reset(self) -> None:
        import torch

        torch.cuda.init()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        free, total = torch.cuda.mem_get_info()
        # In use before our model exists: this process's CUDA context (and anything else on the GPU).
        self.before = total - free - torch.cuda.memory_reserved()

    def read(self) -> dict:
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {"device": props.name, "total_bytes": int(props.total_memory),
                "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()), "context_bytes": int(self.before)}


class ProcessMemory:
    """A CPU stand-in for CudaMemory (experiments/gpu_all.py --tiny, tests): the process's peak
    resident memory over its life, against the machine's RAM. Not resettable, so an upper bound."""

    def reset(self) -> None:
        pass

    def read(self) -> dict:
        import os
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {"device": "cpu (process peak RSS)", "total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "peak_allocated_bytes": peak, "peak_reserved_bytes": peak, "context_bytes": 0}


def probe_data(config: dict, trainer_cfg: dict, steps: int):
    """What the probe trains on, as a trial's prepared data (training.trial.TrialData): random token
    ids at full length, so that every batch the collator pads is batch_size x max_length; `steps`
    batches of training rows and one evaluation batch, labels cycling through the classes."""
    import numpy as np
    import pandas as pd
    from datasets import Dataset

    from medsweep import data
    from medsweep.training.model import load_tokenizer
    from medsweep.training.trial import TrialData

    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    # Ids of the base vocabulary (every model has an embedding row for them), never added tokens.
    vocab, length = min(len(tokenizer), tokenizer.vocab_size), trainer_cfg["max_length"]
    generator = np.random.default_rng(0)

    def rows(count: int) -> Dataset:
        return Dataset.from_dict({"input_ids": generator.integers(0, vocab, (count, length)).tolist(),
                                  "attention_mask": [[1] * length] * count, "length": [length] * count,
                                  "labels": [i % len(splits.label_names) for i in range(count)]})

    train_set = rows(steps * trainer_cfg["batch_size"])
    return TrialData(splits, tokenizer, pd.DataFrame({"label": train_set["labels"]}), train_set,
                     rows(trainer_cfg["eval_batch_size"]), val_groups={}, cache_hits={})


def measure_peak_memory(config: dict, steps: int = 3, memory=None, device: Optional[str] = None) -> dict:
    """Train `steps` optimizer steps at the config's batch_size x max_length, then one evaluation
    batch at eval_batch_size, through a trial's own Trainer (training.trial.build_trainer: its model
    builder, dtype, autocast and optimizer), and return the memory reading with the shapes it ran.

    `memory` reads the device's memory (`reset()` before the model is built, `read()` after);
    default: the CUDA allocator. Tests pass a reader of their own to run the same path on a CPU.
    """
    import torch

    from medsweep.hf import quiet_libraries
    from medsweep.training import precision
    from medsweep.training.trial import build_trainer

    quiet_libraries()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    memory = memory or CudaMemory()
    # One batch per optimizer step (no accumulation: the peak is one batch's), evaluated once at the end.
    trainer_cfg = dict(config["trainer"], max_steps=steps, gradient_accumulation_steps=1, eval_every_steps=steps)
    prepared = probe_data(config, trainer_cfg, steps)
    dtype = precision.resolve_dtype(config["model"]["dtype"])
    started = time.time()
    memory.reset()
    shapes, out_of_memory, trainer = [], False, None
    with tempfile.TemporaryDirectory(prefix="medsweep-probe-") as output_dir:
        try:
            trainer = build_trainer(config, trainer_cfg, prepared, dtype, output_dir, callbacks=[], save=False,
                                    device=precision.Device(cuda=False) if device == "cpu" else None)
            # What the model ran: every training and evaluation batch, as the Trainer handed it over.
            trainer.model.register_forward_pre_hook(
                lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
            trainer.train()
        except torch.OutOfMemoryError:
            out_of_memory = True
        except FloatingPointError:
            pass  # random inputs made the evaluation's outputs NaN: its batch had run, the memory is measured
        if device == "cuda":
            torch.cuda.synchronize()
        # Read while the Trainer still holds the model and the optimizer's state.
        reading = memory.read()
        del trainer
    return {**reading, "out_of_memory": out_of_memory, "shapes": shapes, "steps": steps, "dtype": precision.dtype_name(dtype),
            "seconds": round(time.time() - started, 1)}


def choose_share(measured: dict, max_concurrent: int, num_gpus: float, margin: float = MARGIN) -> dict:
    """From the probe's reading, how many trials share a GPU and the share each asks Ray for."""
    context = max(measured["context_bytes"], CONTEXT_BYTES)
    need = measured["peak_reserved_bytes"] * (1 + margin) + context
    fits = 0 if measured["out_of_memory"] else int(measured["total_bytes"] // need)
    # Spread the concurrent trials over every GPU first; share only what the concurrency needs.
    wanted = max(1, math.ceil(max_concurrent / max(1, int(num_gpus))))
    per_gpu = max(1, min(fits, wanted))
    return {"gpus_per_trial": round(1.0 / per_gpu, 4), "trials_per_gpu": per_gpu, "fit_per_gpu": fits,
            "need_per_trial_bytes": int(need), "margin": margin, "context_bytes_used": int(context),
            "max_concurrent": max_concurrent, "num_gpus": num_gpus}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def probe_on_a_gpu(config: dict, num_gpus: float = 1, memory=None) -> dict:
    """Run the probe as a Ray task on one whole GPU of the cluster (where trials will run). The
    worker exits afterwards (max_calls=1), so its CUDA context and cache are gone before trials start.
    (`num_gpus=0` with a CPU `memory` reader runs the same task on a CPU, for tests.)"""
    import ray

    task = ray.remote(num_gpus=num_gpus, num_cpus=config["cluster"]["cpus_per_trial"], max_calls=1)(measure_peak_memory)
    return ray.get(task.remote(config, memory=memory))


def describe(plan: dict, probe: dict, shape: dict) -> str:
    if probe["out_of_memory"]:
        found = "ran out of memory even alone"
    else:
        found = (f"peaked at {probe['peak_reserved_bytes'] / GIB:.2f} GiB reserved "
                 f"({probe['peak_allocated_bytes'] / GIB:.2f} GiB allocated)")
    return (f"[medsweep] cluster.gpus_per_trial=auto: the probe (batch {shape['trainer.batch_size']} x "
            f"{shape['trainer.max_length']} tokens, eval batch {shape['trainer.eval_batch_size']}, {probe['dtype']}) "
            f"{found} on {probe['device']} ({probe['total_bytes'] / GIB:.1f} GiB); with a {plan['margin']:.0%} margin and "
            f"{plan['context_bytes_used'] / GIB:.1f} GiB CUDA context {plan['fit_per_gpu']} fit per GPU; "
            f"sweep.max_concurrent={plan['max_concurrent']} over {plan['num_gpus']:g} GPU(s): "
            f"gpus_per_trial={plan['gpus_per_trial']:g} ({plan['trials_per_gpu']} per GPU)")


def resolve_gpus_per_trial(config: dict, probe: Optional[Callable[[dict], dict]] = None,
                           gpus: Optional[Callable[[], float]] = None) -> float:
    """cluster.gpus_per_trial as a number. "auto" is measured once (Ray must be up) and written back
    into `config`, so the sweep's trials, their seed re-runs and their results all see the number.
    `probe` (default: probe_on_a_gpu) and `gpus` (default: the Ray cluster's GPU count) are
    parameters so that tests can run the arithmetic without a GPU."""
    cluster = config["cluster"]
    if cluster["gpus_per_trial"] != "auto":
        return cluster["gpus_per_trial"]
    run_dir = Path(config["run_dir"])
    num_gpus = (gpus or cluster_gpus)()
    if num_gpus == 0:
        cluster["gpus_per_trial"] = 0
        print("[medsweep] cluster.gpus_per_trial=auto: no GPU in the Ray cluster, trials run on CPUs (gpus_per_trial=0)",
              flush=True)
        write(run_dir, {"gpus_per_trial": 0, "num_gpus": 0, "reason": "no GPU in the Ray cluster"})
        from medsweep.training.precision import check_precision

        check_precision(config["model"], cluster)  # QLoRA / float16 cannot run there: one line, no trial
        return 0
    shape = largest_shape(config)
    try:
        measured = (probe or probe_on_a_gpu)(probe_config(config))
    except Exception as exc:  # a Ray task error is pages long; the sweep has not started
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConfigError(f"cluster.gpus_per_trial=auto: the GPU memory probe failed ({last}); "
                          "set cluster.gpus_per_trial to a number instead") from exc
    plan = choose_share(measured, config["sweep"]["max_concurrent"], num_gpus)
    cluster["gpus_per_trial"] = plan["gpus_per_trial"]
    print(describe(plan, measured, shape) + f"; saved to {run_dir / PROBE_FILE}", flush=True)
    if measured["out_of_memory"]:
        print("[medsweep] the largest shape of the search space does not fit on one GPU: trials that draw it "
              "halve their batch (same effective batch) until it fits", flush=True)
    write(run_dir, {**plan, "probe": measured, "shape": shape})
    return plan["gpus_per_trial"]


def write(run_dir: Path, payload: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PROBE_FILE).write_text(json.dumps(payload, indent=2, default=str))
    except OSError as exc:
        raise ConfigError(f"cannot write {run_dir / PROBE_FILE}: {exc}") from None
