"""What a fresh worker process costs each trial: the same sweep with `cluster.reuse_actors=false`
(Ray starts a process per trial, which imports torch, transformers and peft again) and with
`cluster.reuse_actors=true` (medsweep's default: the next trial runs in the process the last one left),
alternating, in one process run. Short trials on the tiny random model through one trial slot, so the
start-up cost is not hidden behind training.

    python experiments/bench_reuse.py            # ~3 min on 2 cores

The last line is `ratio=X.XX` (sweep time with reuse over without).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ray

from medsweep.search import sweep
from medsweep.run import compose


def sweep_seconds(trials: int, reuse: bool) -> tuple[float, int]:
    """Wall time of run_sweep (Ray already started, so only the trials count) and worker processes used."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = compose(["model=tiny_random", "+sweep=smoke", f"sweep.num_trials={trials}", "sweep.max_concurrent=1",
                          "sweep.scheduler=none", "cluster.num_cpus=1", "cluster.cpus_per_trial=1", "trainer.epochs=1",
                          "trainer.max_length=32", "data.max_train_samples=48", "data.max_eval_samples=40",
                          f"cluster.reuse_actors={str(reuse).lower()}"], run_dir)
        space, splits = sweep.preflight(config)
        sweep.init_ray(config["cluster"])
        started = time.time()
        results = sweep.run_sweep(config, space, num_train=len(splits.train))
        elapsed = time.time() - started
        ray.shutdown()
    assert all(r.error is None for r in results), [str(r.error) for r in results if r.error]
    return elapsed, len({r.metrics["pid"] for r in results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for reuse in (False, True):  # alternated, so drift on a shared machine hits both sides
            seconds, processes = sweep_seconds(args.trials, reuse)
            times[reuse].append(seconds)
            print(f"reuse_actors={str(reuse).lower():5}  {args.trials} trials  {seconds:6.1f} s  "
                  f"{processes} worker process(es)", flush=True)
    fresh, reused = statistics.median(times[False]), statistics.median(times[True])
    print(f"tiny random BERT, {args.trials} one-epoch trials through one slot, median of {args.repeats}")
    print(f"fresh process per trial   {fresh:6.1f} s")
    print(f"reused worker process     {reused:6.1f} s   saved {(fresh - reused) / args.trials:.1f} s per trial")
    print(f"ratio={reused / fresh:.2f}")


if __name__ == "__main__":
    main()
