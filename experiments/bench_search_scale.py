"""The search at scale: simulated time to a good model, medsweep as shipped vs what users would run
instead, at 1, 8, 32 and 128 slots, on replayed learning curves (medsweep/simulation/clock.py).

    python experiments/bench_search_scale.py --quick          # < 10 min on 2 cores: 3 tasks, 1/8/32 slots, 3 seeds
    python experiments/bench_search_scale.py                  # 5 tasks, 1/8/32/128 slots, 5 seeds (~1 h)
    python experiments/bench_search_scale.py --variants       # medsweep's settings, one at a time (the defaults)
    python experiments/bench_search_scale.py --tasks lcbench:3945 table:lora --slots 32 --seeds 5

Sides, all on the same slots, curves and simulated clock (the search algorithm and defaults are what
differ, never the training loop):
  medsweep     as shipped: medsweep's own sampler (search.sweep.make_sampler: TPE, seeded, a third of the
               trials random up to 10, sweep.constant_liar) and scheduler (search.sweep.build_scheduler:
               Ray's ASHA with sweep.grace_period / reduction_factor), the base configuration first,
               sweep.max_concurrent = slots.
  hf           Trainer.hyperparameter_search(backend="optuna") defaults: optuna.create_study(direction)
               (TPE, MedianPruner) and study.optimize(n_jobs=1): one trial at a time. Its Ray backend runs
               ray.tune.run without search_alg or scheduler: the `ray` side's algorithm.
  ray          Ray Tune's defaults: random search (BasicVariantGenerator), FIFO, every slot busy.
  optuna       Optuna alone: create_study defaults (TPE, MedianPruner), study.optimize(n_jobs=slots).
  bohb         a Bayesian + HyperBand configuration as W&B Sweeps offer (method: bayes, early_terminate:
               hyperband, eta 3): TPE (BOHB's own model is this kind of density estimator; Optuna's GP
               costs ~0.5 s per proposal at 300 trials here, too slow for 500-trial runs) with Optuna's
               HyperbandPruner (reduction factor 3), every slot busy.

Tasks: `lcbench:<OpenML id>` (YAHPO Gym's LCBench surrogate over its 7 hyperparameters, 8 evaluations
per trial at epochs 6.5, 13, ..., 52) and `table:full` / `table:lora` (medsweep's own recorded curves,
experiments/record_curves.py: MiniLM on Medical Abstracts, 4 evaluations per trial, validation macro-F1,
the ranges the shipped lr_full / lr_lora sweeps search).

Budget: every side gets the same simulated seconds, `max(2, 64 / slots)` times the median full-trial
length of the task (from 64 random configurations): 64 full trials' worth up to 32 slots, two rounds of
the slots beyond (256 at 128 slots). Target (per task, slots, seed): within 1% of the best value any side found by then
(value >= 0.99 x best). A side's time to target is the simulated second of its first evaluation at or
above it; a side that never reaches it is charged the whole budget (marked *, the ratio is then a bound).
The ratio is medsweep's time over the fastest other side's, per seed; medians and spread over seeds and
tasks. The last line: `ratio=X.XX`, the median at 32 slots (goal <= 0.35; never worse at 1 slot).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from medsweep.run import compose
from medsweep.search import sweep as medsweep_sweep
from medsweep.simulation import clock, curves, table

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO.parent / "shared" / "benchmarks"
LCBENCH_EVALUATIONS = 8
MARGIN = 0.01


class Task:
    """A curve source with its search space, the configuration medsweep tries first, and evaluations."""

    def __init__(self, name: str, benchmarks: Path):
        self.name = name
        kind, _, which = name.partition(":")
        if kind == "lcbench":
            self.source = curves.LCBench(which, benchmarks)
            self.evaluations = LCBENCH_EVALUATIONS
            self.space = {
                "batch_size": IntDistribution(16, 512, log=True), "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
                "max_dropout": FloatDistribution(0.0, 1.0), "max_units": IntDistribution(64, 1024, log=True),
                "momentum": FloatDistribution(0.1, 0.99), "num_layers": IntDistribution(1, 5),
                "weight_decay": FloatDistribution(1e-5, 1e-1)}
            # LCBench's default point, as the shipped replay_lcbench sweep tries first.
            self.base = {"batch_size": 91, "learning_rate": 3.16e-3, "max_dropout": 0.5, "max_units": 256,
                         "momentum": 0.545, "num_layers": 3, "weight_decay": 0.05}
            self.metric = "val_f1_macro"  # LCBench's balanced accuracy (curves.METRICS)
        elif kind == "table":
            self.source = table.CurveTable(table.embedded_table())
            self.evaluations = self.source.evaluations
            epochs = CategoricalDistribution(self.source.values("epochs"))
            warmup = FloatDistribution(0.0, 0.2)
            if which == "full":
                # lr_full's range (5e-5..6e-4) cut to what was recorded; the base is lr_full's.
                self.space = {"learning_rate": FloatDistribution(2e-5, 2e-4, log=True), "warmup_ratio": warmup,
                              "epochs": epochs}
                self.base = {"learning_rate": 1e-4, "warmup_ratio": 0.1, "epochs": 4}
                self.fixed = {"finetune": "full", "r": 0, "target_modules": ""}
            else:
                # lr_lora's space and base configuration.
                self.space = {"learning_rate": FloatDistribution(3e-4, 3e-3, log=True), "warmup_ratio": warmup,
                              "r": CategoricalDistribution([8, 16]),
                              "target_modules": CategoricalDistribution(["query,value", "all-linear"]), "epochs": epochs}
                self.base = {"learning_rate": 1e-3, "warmup_ratio": 0.1, "r": 8, "target_modules": "query,value",
                             "epochs": 4}
                self.fixed = {"finetune": "lora"}
            self.metric = "val_f1_macro"
        else:
            raise SystemExit(f"unknown task {name!r}: lcbench:<OpenML id> or table:full|lora")
        self.kind = kind
        self.cache: dict = {}

    def curve(self, params: dict, number: int) -> list[tuple[float, float]]:
        if self.kind == "table":
            params = {**self.fixed, **params, "seed": number}  # each trial replays one recorded seed
        key = tuple(sorted(params.items()))
        if key not in self.cache:
            points = self.source.curve(params, self.evaluations)
            self.cache[key] = [(point[self.metric], point["seconds"]) for point in points]
        return self.cache[key]

    def median_trial_s(self) -> float:
        sampler = optuna.samplers.RandomSampler(seed=12345)
        study = optuna.create_study(sampler=sampler)
        lengths = []
        for number in range(64):
            trial = study.ask(self.space)
            lengths.append(self.curve(trial.params, number)[-1][1])
            study.tell(trial, 0.0)
        return statistics.median(lengths)


def medsweep_config(task: Task, slots: int, trials: int, settings: list[str]) -> dict:
    """medsweep's own config for this sweep: the shipped defaults plus `settings` (sweep.* overrides)."""
    return compose(["+sweep=replay_lcbench", f"trainer.evaluations={task.evaluations}", f"sweep.num_trials={trials}",
                    f"sweep.max_concurrent={slots}", *settings], str(REPO / "runs" / "bench_search_scale"))


def medsweep_side(task: Task, slots: int, trials: int, settings: list[str], name: str = "medsweep") -> clock.Side:
    config = medsweep_config(task, slots, trials, settings)
    sweep = config["sweep"]

    def scheduler(evaluations: int):
        with contextlib.redirect_stdout(io.StringIO()):  # build_scheduler may print a first-rung hint per call
            return clock.RayStopper(medsweep_sweep.build_scheduler(config, num_train=1))

    return clock.Side(name, concurrency=lambda s: min(s, sweep["max_concurrent"]),
                      sampler=lambda seed: medsweep_sweep.make_sampler(dict(sweep, seed=seed)),
                      stopper=scheduler, first=[task.base] if sweep["try_base"] else [])


def other_sides() -> list[clock.Side]:
    from ray.tune.schedulers import FIFOScheduler

    tpe = lambda seed: optuna.samplers.TPESampler(seed=seed)  # noqa: E731 (create_study's default sampler, seeded)
    median = lambda evaluations: optuna.pruners.MedianPruner()  # noqa: E731 (create_study's default pruner)
    return [
        clock.Side("hf", concurrency=lambda s: 1, sampler=tpe, stopper=lambda e: clock.PrunerStopper(), pruner=median),
        clock.Side("ray", concurrency=lambda s: s, sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed),
                   stopper=lambda e: clock.RayStopper(FIFOScheduler())),
        clock.Side("optuna", concurrency=lambda s: s, sampler=tpe, stopper=lambda e: clock.PrunerStopper(), pruner=median),
        clock.Side("bohb", concurrency=lambda s: s, sampler=tpe, stopper=lambda e: clock.PrunerStopper(),
                   pruner=lambda e: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=e, reduction_factor=3)),
    ]


def rounds(slots: int) -> float:
    """The budget in median trial lengths per slot: 64 trials' worth up to 32 slots, two rounds beyond."""
    return max(2.0, 64.0 / slots)


def run_cell(task: Task, slots: int, seeds: list[int], sides: list[clock.Side]) -> dict:
    """Every side on every seed at one slot count: {side: [Outcome per seed]} and the budget."""
    budget = rounds(slots) * task.median_trial_s()
    outcomes = {side.name: [] for side in sides}
    for seed in seeds:
        for side in sides:
            outcomes[side.name].append(clock.simulate(side, task.space, task.curve, slots, budget, seed,
                                                      task.evaluations))
    return {"budget": budget, "outcomes": outcomes}


def ranks(cell: dict) -> dict[str, list[float]]:
    """Each side's rank (1 = best, ties share the mean rank) by best value at the budget, per seed."""
    budget, outcomes = cell["budget"], cell["outcomes"]
    seeds = len(next(iter(outcomes.values())))
    result = {name: [] for name in outcomes}
    for index in range(seeds):
        values = {name: runs[index].best_by(budget) for name, runs in outcomes.items()}
        for name, value in values.items():
            better = sum(v > value for v in values.values())
            tied = sum(v == value for v in values.values())
            result[name].append(better + (tied + 1) / 2)
    return result


def summarize(task: Task, slots: int, cell: dict, reference: str) -> list[float]:
    """Prints one table for a (task, slots) cell; returns the reference side's ratio per seed."""
    budget, outcomes = cell["budget"], cell["outcomes"]
    seeds = len(next(iter(outcomes.values())))
    ratios, rows = [], {name: {"time": [], "best": [], "half": [], "hit": 0, "trials": [], "stopped": []}
                        for name in outcomes}
    for index in range(seeds):
        best = max(o[index].best_by(budget) for o in outcomes.values())
        target = best - MARGIN * abs(best)
        times = {}
        for name, runs in outcomes.items():
            run = runs[index]
            reached = run.time_to(target)
            times[name] = reached if reached is not None else budget
            rows[name]["time"].append(times[name])
            rows[name]["hit"] += reached is not None
            rows[name]["best"].append(run.best_by(budget))
            rows[name]["half"].append(run.best_by(budget / 4))
            rows[name]["trials"].append(run.trials)
            rows[name]["stopped"].append(run.stopped)
        fastest_other = min(t for name, t in times.items() if name != reference)
        ratios.append(times[reference] / fastest_other)
    print(f"\n{task.name}, {slots} slot(s), budget {budget:,.0f} simulated s ({rounds(slots):g} median trials per slot), "
          f"{seeds} seeds")
    print(f"  {'side':<22}{'time to target (s)':>24}{'reached':>9}{'best @budget':>14}{'best @1/4':>11}{'trials':>8}{'stopped':>9}")
    for name, row in rows.items():
        spread = f"{statistics.median(row['time']):,.0f} [{min(row['time']):,.0f}-{max(row['time']):,.0f}]"
        print(f"  {name:<22}{spread:>24}{row['hit']:>6}/{seeds:<2}{statistics.median(row['best']):>14.4f}"
              f"{statistics.median(row['half']):>11.4f}{statistics.median(row['trials']):>8.0f}"
              f"{statistics.median(row['stopped']):>9.0f}")
    print(f"  {reference} / fastest other: median {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] per seed: {' '.join(f'{r:.2f}' for r in ratios)}")
    return ratios


VARIANTS = {  # medsweep's settings measured one at a time against the shipped ones
    "constant_liar": ["sweep.constant_liar=true"],
    "no_liar": ["sweep.constant_liar=false"],
    "startup_20": ["sweep.startup_trials=20"],
    "grace_2": ["sweep.grace_period=2"],
    "grace_3": ["sweep.grace_period=3"],
    "grace_4": ["sweep.grace_period=4"],
    "grace_1": ["sweep.grace_period=1"],
    "rf_3": ["sweep.reduction_factor=3"],
    "brackets_3": ["sweep.brackets=3"],
    "fifo": ["sweep.scheduler=fifo"],
    "half_concurrent": [],  # max_concurrent = slots / 2 (set per cell)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["lcbench:3945", "lcbench:7593", "lcbench:34539",
                                                        "lcbench:189909", "table:lora"])
    parser.add_argument("--slots", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 tasks, 1/8/32 slots, 3 seeds: < 10 min on 2 cores")
    parser.add_argument("--variants", nargs="*", default=None,
                        help=f"instead of the other tools: medsweep with each setting changed ({', '.join(VARIANTS)})")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed+seeds-1 (held-out seeds to check a setting chosen on 0..4)")
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.slots, args.seeds = ["lcbench:3945", "lcbench:34539", "table:lora"], [1, 8, 32], 3
    started = time.time()
    tasks = [Task(name, args.benchmarks) for name in args.tasks]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    by_slots: dict[int, list[float]] = {}
    ranked: dict[int, dict[str, list[float]]] = {}
    for slots in args.slots:
        for task in tasks:
            trials = int(rounds(slots) * slots)
            sides = [medsweep_side(task, slots, trials, [])]
            if args.variants is None:
                sides += other_sides()
            else:
                for variant in args.variants or list(VARIANTS):
                    settings = list(VARIANTS[variant])
                    if variant == "half_concurrent":
                        settings = [f"sweep.max_concurrent={max(1, slots // 2)}"]
                    sides.append(medsweep_side(task, slots, trials, settings, name=f"medsweep+{variant}"))
            cell = run_cell(task, slots, seeds, sides)
            by_slots.setdefault(slots, []).extend(summarize(task, slots, cell, "medsweep"))
            for name, values in ranks(cell).items():
                ranked.setdefault(slots, {}).setdefault(name, []).extend(values)
            print(f"  ({time.time() - started:.0f} s so far)", flush=True)
    print("\nMean rank by best value at the budget (1 = best of the sides; all tasks and seeds):")
    for slots, table_ in ranked.items():
        print(f"  {slots:>4} slot(s): " + ", ".join(f"{name} {statistics.mean(values):.2f}"
                                               for name, values in sorted(table_.items(), key=lambda kv: statistics.mean(kv[1]))))
    print("\nmedsweep's time to target over the fastest other side's, all tasks and seeds:")
    for slots, ratios in by_slots.items():
        print(f"  {slots:>4} slot(s): median {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] "
              f"over {len(ratios)} (task, seed) pairs; worse than the fastest other in {sum(r > 1.0 for r in ratios)}")
    headline = by_slots.get(32) or by_slots[max(by_slots)]
    print(f"ratio={statistics.median(headline):.2f}")


if __name__ == "__main__":
    main()
