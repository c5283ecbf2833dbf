"""The driver at scale, on a simulated cluster (issue: a cluster in a box).

Both sides replay the same LCBench learning curves (YAHPO Gym's surrogate, medsweep/simulation/) on
the same simulated Ray nodes, declaring GPUs this machine does not have, in one process run:

- medsweep: `medsweep.run.execute`, the whole driver: preflight, the Optuna journal study, the
  scheduler, leaderboard, console, trackers (--trackers), the report at the end;
- bare: a `tune.Tuner` with the same trainable, resources, search space, sampler (TPE, same seed,
  Optuna's in-memory storage) and ASHA settings, and nothing else, in two checkpoint keepings:
  `bare-keep1` keeps one checkpoint per trial as Ray's docs show (CheckpointConfig(num_to_keep=1):
  Ray then saves its whole experiment state after every trial checkpoint), `bare` keeps them all
  (num_to_keep=None: Ray saves on its own clock, as medsweep's driver does with
  --periodic-saves, cluster.periodic_saves=true; medsweep's default keeps one). The ratio is taken
  against `bare`, the faster, and against `bare-keep1`, medsweep's default's policy.

What it prints per side: wall seconds, trials/s, the driver process's CPU seconds and peak RSS (sampled),
the run dir's size, and each medsweep layer's time (class methods wrapped with timers: leaderboard,
console, searcher, study, trackers, report). The last line is `driver_ratio=X.XX`: medsweep wall over
`bare` wall at the largest --trials, median over --repeats (goal <= 1.10 at 1,000 trials, trackers on);
the ratio over `bare-keep1` is printed above it.

    pip install -e '.[simulate,mlflow]' wandb
    python experiments/bench_cluster.py --quick          # 200 trials at 32 slots, W&B offline: ~7 min on 2 cores
    python experiments/bench_cluster.py --trials 1000 --slots 32 --trackers wandb mlflow
    python experiments/bench_cluster.py --trials 10000 --slots 128 --repeats 1

Needs ../shared/benchmarks (or MEDSWEEP_BENCHMARKS) with YAHPO Gym's lcbench/ folder.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from medsweep.run import compose, execute
from medsweep.simulation import cluster as simulated

TIMERS: dict[str, list[float]] = defaultdict(list)


def timed(cls, method: str, layer: str) -> None:
    """Wrap cls.method so that each call adds its seconds to TIMERS[layer]."""
    original = getattr(cls, method)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMERS[layer].append(time.perf_counter() - started)

    setattr(cls, method, wrapper)


def install_timers() -> None:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from medsweep.reporting import report, tracking
    from medsweep.search import console, leaderboard, study

    for method in ("on_trial_result", "on_trial_complete", "on_trial_error", "on_experiment_end"):
        timed(leaderboard.Leaderboard, method, "leaderboard")
        timed(tracking.TrialRuns, method, "trackers (per trial)")
    timed(tracking.TrialRuns, "on_trial_start", "trackers (per trial)")
    timed(console.SweepConsole, "report", "console")
    timed(console.SweepConsole, "should_report", "console")
    timed(OptunaSearch, "suggest", "searcher.suggest")
    timed(OptunaSearch, "on_trial_complete", "searcher.complete")
    timed(OptunaSearch, "on_trial_result", "searcher.result")
    timed(study.StudyCloser, "on_experiment_end", "study close")
    timed(report, "write_report", "report")
    timed(tracking, "log_sweep", "trackers (sweep run)")
    # Both sides: Tune's snapshot of its experiment state (the whole trial list as JSON, forced after
    # every trial checkpoint when CheckpointConfig.num_to_keep is set), Ray's cost that grows with trials.
    timed(TuneController, "save_to_dir", "ray: experiment state saves")


class Sampler:
    """Peak RSS of this (the driver's) process over a block, sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def shape(slots: int) -> tuple[int, float]:
    """Nodes and declared GPUs per node for `slots` trials in flight at gpus_per_trial=0.25: 8 GPUs a node."""
    gpus = slots / 4
    nodes = max(1, round(gpus / 8))
    return nodes, gpus / nodes


def overrides(args, slots: int, trials: int, tracker: str) -> list[str]:
    nodes, gpus_per_node = shape(slots)
    chosen = ["+sweep=replay_lcbench", "cluster=simulated", f"cluster.simulate.nodes={nodes}",
              f"cluster.simulate.gpus_per_node={gpus_per_node}", "cluster.gpus_per_trial=0.25",
              f"cluster.simulate.cpus_per_node={4 * gpus_per_node}",
              f"sweep.num_trials={trials}", f"sweep.max_concurrent={slots}", f"replay.task={args.tasks[0]}",
              f"replay.time_scale={args.scale}", f"sweep.seed={args.seed}"]
    if getattr(args, "periodic_saves", False):
        chosen += ["cluster.periodic_saves=true"]
    if tracker == "wandb":
        chosen += ["tracker=wandb", "tracker.mode=offline"]
    elif tracker == "mlflow":
        chosen += ["tracker=mlflow"]
    return chosen


def measure(run, folder: Path) -> dict:
    TIMERS.clear()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with Sampler() as memory:
        trials = run()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "trials": trials, "trials_per_s": trials / wall,
            "driver_cpu_s": (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime),
            "peak_rss_mb": memory.peak / 1e6, "run_dir_mb": size_mb(folder),
            "state_mb": max((f.stat().st_size for f in folder.rglob("experiment_state-*.json")), default=0) / 1e6,
            "layers": {layer: (sum(times), len(times), max(times)) for layer, times in TIMERS.items()}}


def medsweep_side(config: dict) -> dict:
    def run():
        execute(config)
        return sum(1 for _ in open(Path(config["run_dir"]) / "leaderboard.csv")) - 1

    return measure(run, Path(config["run_dir"]))


def bare_side(config: dict, keep: int | None = None) -> dict:
    """A Tuner as a Ray Tune user would write it, with medsweep's trainable, resources and settings."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from medsweep.plan import primary
    from medsweep.search import sweep
    from medsweep.search.space import SearchSpace
    from medsweep.simulation import curves, replay

    sweep_cfg, cluster = config["sweep"], config["cluster"]
    storage = Path(config["run_dir"])
    objective = primary(config)

    def run():
        sweep.init_ray(cluster)
        curves.start_server(config)
        sampler = sweep.make_sampler(sweep_cfg)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(replay.replay_trial, base_config=config),
                                {"cpu": cluster["cpus_per_trial"], "gpu": cluster["gpus_per_trial"]}),
            param_space=SearchSpace(sweep_cfg["search_space"]).ray(config),
            tune_config=tune.TuneConfig(
                metric=objective.metric, mode=objective.mode, num_samples=sweep_cfg["num_trials"],
                search_alg=OptunaSearch(sampler=sampler), max_concurrent_trials=sweep_cfg["max_concurrent"],
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=config["trainer"]["evaluations"],
                                        grace_period=sweep.grace_period(sweep_cfg, config["trainer"]["evaluations"]),
                                        reduction_factor=sweep_cfg["reduction_factor"]),
                reuse_actors=cluster["reuse_actors"]),
            run_config=tune.RunConfig(name="bare", storage_path=str(storage.resolve()), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)))
        return len(tuner.fit())

    return measure(run, storage)


def show(name: str, result: dict) -> None:
    print(f"  {name:9s} wall {result['wall_s']:7.1f} s  {result['trials']} trials  {result['trials_per_s']:5.2f} trials/s  "
          f"driver CPU {result['driver_cpu_s']:6.1f} s  peak RSS {result['peak_rss_mb']:6.0f} MB  "
          f"run dir {result['run_dir_mb']:6.1f} MB (Tune's experiment state {result['state_mb']:.1f} MB)", flush=True)
    for layer, (seconds, calls, longest) in sorted(result["layers"].items(), key=lambda item: -item[1][0]):
        print(f"      {layer:22s} {seconds:8.2f} s  {calls:6d} calls  longest {longest * 1000:7.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=[32], help="trials in flight (declared GPUs x 4)")
    parser.add_argument("--tasks", nargs="+", default=["3945"], help="LCBench task ids (the first is replayed)")
    parser.add_argument("--trials", type=int, nargs="+", default=[1000])
    parser.add_argument("--trackers", nargs="+", default=["wandb"], choices=["none", "wandb", "mlflow"],
                        help="one medsweep side per tracker (medsweep takes one tracker per run)")
    parser.add_argument("--scale", type=float, default=0.001, help="replay.time_scale (0.001: a 300 s curve in 0.3 s)")
    parser.add_argument("--bare", nargs="+", default=["bare", "bare-keep1"], choices=["bare", "bare-keep1"],
                        help="bare Tuner sides: all checkpoints kept, or num_to_keep=1 (see above)")
    parser.add_argument("--periodic-saves", action="store_true",
                        help="medsweep sides with cluster.periodic_saves=true (Ray saves its state on its own clock)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="200 trials at 32 slots, W&B offline")
    args = parser.parse_args()
    if args.quick:
        args.slots, args.trials, args.trackers = [32], [200], ["wandb"]
    os.environ.setdefault("WANDB_SILENT", "true")
    install_timers()
    ratios = defaultdict(list)
    root = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    print(f"bench_cluster: slots {args.slots}, trials {args.trials}, trackers {args.trackers}, task {args.tasks[0]}, "
          f"time_scale {args.scale}, {os.cpu_count()} CPUs", flush=True)
    try:
        for slots in args.slots:
            for trials in args.trials:
                for repeat in range(args.repeats):
                    sides = {}
                    # Alternate which side runs first: the first one also pays for starting the nodes' workers.
                    order = [*args.bare, *args.trackers] if repeat % 2 == 0 else [*args.trackers, *args.bare]
                    for side in order:
                        folder = root / f"{slots}_{trials}_{repeat}_{side}"
                        bare = side.startswith("bare")
                        config = compose(overrides(args, slots, trials, "none" if bare else side), folder)
                        sides[side] = (bare_side(config, 1 if side == "bare-keep1" else None) if bare
                                       else medsweep_side(config))
                        simulated.stop()  # each side starts its own nodes: no warm workers handed over
                        shutil.rmtree(folder / "wandb", ignore_errors=True)
                        # Printed as each side ends: a long run stopped by hand keeps what it measured.
                        print(f"slots={slots} trials={trials} repeat={repeat + 1}", flush=True)
                        show(side, sides[side])
                    for tracker in args.trackers:
                        for bare in args.bare:
                            ratios[(slots, trials, tracker, bare)].append(sides[tracker]["wall_s"] / sides[bare]["wall_s"])
    except BaseException:
        print(f"stopped; the run dirs are kept in {root}", flush=True)
        raise
    else:
        shutil.rmtree(root, ignore_errors=True)
    finally:
        simulated.stop()
    print("medsweep wall / bare Tuner wall (median [min, max] over repeats):")
    for (slots, trials, tracker, bare), values in ratios.items():
        print(f"  slots={slots} trials={trials} tracker={tracker} vs {bare}: {statistics.median(values):.3f} "
              f"[{min(values):.3f}, {max(values):.3f}]")
    largest = max(args.trials)
    against = "bare" if "bare" in args.bare else args.bare[0]
    worst = max(statistics.median(v) for (s, t, _, b), v in ratios.items() if t == largest and b == against)
    print(f"driver_ratio={worst:.2f}")


if __name__ == "__main__":
    main()
