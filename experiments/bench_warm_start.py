"""Warm start: does a sweep given an earlier sweep's trials (sweep.warm_start) reach that sweep's
best sooner than a cold sweep on the same budget?

One earlier sweep (cold, `--earlier` trials) sets the target: its best validation value. Then, for
each repeat (a different sweep.seed, the same for both sides), a cold `--trials`-trial sweep and a
warm-started one (sweep.warm_start=[earlier]) run one after the other in this process, under the same
Ray. Time to target: seconds from the sweep's start to the first evaluation that reaches the target
(a sweep that never reaches it counts as its whole run, and is reported as such).

    python experiments/bench_warm_start.py                      # MiniLM, ~8 min on 2 idle cores
    python experiments/bench_warm_start.py --model tiny_random  # seconds, for a check of the script

Prints each run, the median and spread of both sides, and last `ratio=` (cold / warm median time to
target; above 1: the warm start gets there sooner).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsweep.run import compose
from medsweep.rundir import atomic_write
from medsweep.search import sweep

# Both models on a small slice of the embedded abstracts, with a learning-rate range wide enough that
# its ends fail (too low: the majority class; too high: divergence), so the search has something to find.
# The tiny random BERT runs in seconds but barely separates warm from cold (every trial ends near the
# majority class); MiniLM (the default) learns the task in 20 optimizer steps at a good learning rate.
COMMON = ["cluster.cpus_per_trial=1", "promote.enabled=false", "sweep.name=bench_warm", "sweep.max_concurrent=2",
          "sweep.scheduler=none", "+sweep.search_space.trainer.warmup_ratio={type: uniform, lower: 0.0, upper: 0.3}"]
MODELS = {
    "minilm": ["model=minilm", "data.max_train_samples=160", "data.max_eval_samples=100", "trainer.max_length=64",
               "trainer.epochs=2", "trainer.batch_size=16",
               "+sweep.search_space.trainer.learning_rate={type: loguniform, lower: 1.0e-5, upper: 1.0e-2}"],
    "tiny_random": ["model=tiny_random", "data.max_train_samples=200", "data.max_eval_samples=80", "trainer.max_length=32",
                    "trainer.epochs=2", "trainer.batch_size=16",
                    "+sweep.search_space.trainer.learning_rate={type: loguniform, lower: 1.0e-5, upper: 5.0e-2}"],
}


def run(run_dir: Path, trials: int, seed: int, overrides: list[str], warm_from: Path | None = None):
    extra = [f"sweep.num_trials={trials}", f"sweep.seed={seed}"] + ([f"sweep.warm_start=[{warm_from}]"] if warm_from else [])
    config = compose(overrides + extra, run_dir=run_dir)
    plan = sweep.preflight(config)
    # What the CLI writes before the sweep: a warm start checks the earlier run's split fingerprints in it.
    atomic_write(plan.run_dir.data_summary, json.dumps(plan.splits.summary, indent=2, default=str))
    started = time.time()
    results = sweep.run_sweep(plan)
    elapsed = time.time() - started
    # Every evaluation of every trial: (seconds since the sweep started, value).
    evaluations = sorted((row["timestamp"] - started, row["val_f1_macro"])
                         for result in results if result.metrics_dataframe is not None
                         for _, row in result.metrics_dataframe.iterrows())
    return evaluations, elapsed


def time_to(target: float, evaluations, elapsed: float) -> tuple[float, bool]:
    for seconds, value in evaluations:
        if value >= target - 1e-12:
            return max(seconds, 0.0), True
    return elapsed, False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--earlier", type=int, default=6, help="trials of the earlier sweep")
    parser.add_argument("--trials", type=int, default=5, help="trials of each compared sweep")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    args = parser.parse_args()
    overrides = MODELS[args.model] + COMMON
    import ray

    base = Path(tempfile.mkdtemp(prefix="bench_warm_"))
    try:
        earlier = base / "earlier"
        evaluations, _ = run(earlier, args.earlier, seed=100, overrides=overrides)
        target = max(value for _, value in evaluations)
        print(f"earlier sweep: {args.earlier} trials, best val_f1_macro={target:.4f}", flush=True)
        times = {"cold": [], "warm": []}
        for repeat in range(args.repeats):
            for side in ("cold", "warm"):
                evaluations, elapsed = run(base / f"{side}{repeat}", args.trials, seed=repeat, overrides=overrides,
                                           warm_from=earlier if side == "warm" else None)
                seconds, reached = time_to(target, evaluations, elapsed)
                times[side].append(seconds)
                best = max(value for _, value in evaluations)
                print(f"repeat {repeat} {side}: best {best:.4f}, "
                      + (f"reached the earlier best after {seconds:.1f}s" if reached else f"never reached it ({elapsed:.1f}s run)"),
                      flush=True)
    finally:
        ray.shutdown()
    for side, values in times.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{side}: median time to the earlier best {statistics.median(values):.1f}s (range {spread}s, n={len(values)})")
    print(f"ratio={statistics.median(times['cold']) / max(statistics.median(times['warm']), 1e-9):.2f}")


if __name__ == "__main__":
    main()
