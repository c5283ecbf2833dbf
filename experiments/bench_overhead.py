"""What medsweep's orchestration costs: one trial through the full medsweep path (preflight, embedded
Ray, the trial in a Ray actor with a checkpoint per evaluation, the leaderboard; promotion off,
tracking off) vs a bare HF Trainer run of the same config in this process (same data, model,
training arguments, evaluations; no checkpoints).

Where the difference goes: a third run, medsweep's own trial function in this process without Ray
(`run_trial` with a checkpoint per evaluation, copied to a storage folder as Ray would), separates
what the trial itself adds from what Ray adds; timers around `ray.init`, the preflight and the
leaderboard/report step split the rest.

    python experiments/bench_overhead.py --quick    # ~2 min on 2 cores
    python experiments/bench_overhead.py            # ~6 min (--repeats 3: ~18 min)
    python experiments/bench_overhead.py --quick --repeats 3   # sides alternated, medians (~6 min)

The last line is `ratio=X.XX` (medsweep wall time over bare Trainer wall time; goal <= 1.08).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import ray
import torch
from transformers import DataCollatorWithPadding, Trainer

from medsweep import data
from medsweep.config import MedsweepConfig
from medsweep.training.model import build_model, load_tokenizer
from medsweep.hf import quiet_libraries
from medsweep.training.trial import compute_metrics, run_trial, tokenize, training_arguments


def make_config(run_dir: str, train_samples: int, epochs: int) -> dict:
    config = dataclasses.asdict(MedsweepConfig())
    config["data"].update(text_column="medical_abstract", label_column="condition_label",
                          path="builtin:medical_abstracts", label_names_path="builtin:medical_abstracts_labels",
                          max_train_samples=train_samples, max_eval_samples=200)
    config["trainer"].update(epochs=epochs, learning_rate=1e-4)
    config["promote"]["enabled"] = False
    config["run_dir"] = run_dir
    return config


def bare_trainer(config: dict) -> float:
    """What a user would write by hand with transformers alone."""
    started = time.time()
    torch.set_num_threads(int(config["cluster"]["cpus_per_trial"]))
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    model = build_model(config["model"], splits.label_names)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=training_arguments(config["trainer"], out, torch.float32, save=False),
                          train_dataset=tokenize(splits.train, tokenizer, config["trainer"]["max_length"]),
                          eval_dataset=tokenize(splits.validation, tokenizer, config["trainer"]["max_length"]),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=compute_metrics)
        trainer.train()
    return time.time() - started


def trial_without_ray(config: dict) -> float:
    """medsweep's trial function in this process: what the Ray actor runs, minus Ray."""
    started = time.time()
    with tempfile.TemporaryDirectory() as storage:
        def persist(metrics: dict, checkpoint_dir: Path) -> None:
            # Ray's Checkpoint.from_directory + tune.report copy the checkpoint into the run's storage.
            shutil.copytree(checkpoint_dir, Path(storage) / f"checkpoint_{metrics['evaluation']:06d}")

        run_trial(config, on_evaluation=persist)
    return time.time() - started


@contextmanager
def timed(module, name: str, seconds: dict):
    """Wrap module.name so each call's wall time adds to seconds[name]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.time() - started

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def through_medsweep(config: dict) -> tuple[float, dict]:
    from medsweep import run
    from medsweep.search import sweep

    seconds: dict = {}
    started = time.time()
    with timed(sweep, "preflight", seconds), timed(sweep, "init_ray", seconds), timed(run, "publish", seconds):
        run.execute(config)
    elapsed = time.time() - started
    ray.shutdown()
    return elapsed, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 samples x 1 epoch instead of 600 x 2")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the three sides, each round in a rotated order (load drift on a shared "
                             "machine then hits every side); medians are printed")
    args = parser.parse_args()
    quiet_libraries()
    samples, epochs = (300, 1) if args.quick else (600, 2)
    times: dict[str, list[float]] = {"bare": [], "trial": [], "ours": []}
    parts_seen: list[dict] = []
    sides = list(times)
    for round_ in range(args.repeats):
        for side in sides[round_ % 3:] + sides[:round_ % 3]:
            # A fresh run dir per side: medsweep would resume a sweep it finds in the same one.
            with tempfile.TemporaryDirectory() as run_dir:
                config = make_config(run_dir, samples, epochs)
                if side == "bare":
                    times[side].append(bare_trainer(config))
                elif side == "trial":
                    times[side].append(trial_without_ray(config))
                else:
                    seconds, parts = through_medsweep(config)
                    times[side].append(seconds)
                    parts_seen.append(parts)
            print(f"round {round_ + 1}: {side:5s} {times[side][-1]:7.1f} s", flush=True)
    bare, trial, ours = (statistics.median(times[side]) for side in sides)
    parts = {name: statistics.median(p.get(name, 0.0) for p in parts_seen) for name in ("preflight", "init_ray", "publish")}
    ray_rest = ours - trial - sum(parts.values())
    print(f"one MiniLM trial, {samples} samples x {epochs} epoch(s), full fine-tune, 2 CPU threads, median of {args.repeats}")
    print(f"bare Trainer                  {bare:7.1f} s")
    print(f"medsweep trial, no Ray        {trial:7.1f} s   {trial - bare:+6.1f} s  (checkpoint per evaluation, "
          "sorted evaluation, per-trial data load)")
    print(f"medsweep (Ray)                {ours:7.1f} s   {ours - bare:+6.1f} s  in all, of which:")
    print(f"  preflight (data + config)   {parts['preflight']:7.1f} s")
    print(f"  ray.init (local cluster)    {parts['init_ray']:7.1f} s")
    print(f"  leaderboard + report        {parts['publish']:7.1f} s")
    print(f"  Tune: actor start, reports  {ray_rest:7.1f} s  (the rest, over the no-Ray trial)")
    ratios = [o / b for o, b in zip(times["ours"], times["bare"])]
    print(f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"ratio={ours / bare:.2f}")


if __name__ == "__main__":
    main()
