"""A search on a simulated clock: the real samplers and stopping rules, replayed curves, no waiting.

Comparing search algorithms at 32 or 128 slots by running them (even on replayed curves that sleep)
costs real hours per seed; what differs between the tools is which configuration they propose when,
and when they stop a trial, so only that needs to run. `simulate` keeps an event queue of evaluations:
a trial that starts at time t reports evaluation k at t + its curve's seconds to k. At each event the
side's own code decides, in the order a real driver would see the results:

- proposals come from an Optuna sampler through ask/tell (TPE, random, ...), seeing every finished,
  stopped and still running trial at that moment (RUNNING trials are what `constant_liar` lies about);
- early stopping is a Ray Tune scheduler (ASHA, FIFO: they only read the trial's id and result, so the
  real classes run here unchanged) or an Optuna pruner (median, Hyperband) on the reported values.

Left out: start-up and scheduling overhead of each trial, data loading, checkpoint traffic, stragglers
and failures: every trial's clock is its curve's seconds (docs/benchmarks.md says what a GPU run adds).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import optuna

# curve(params, seed) -> [(value, cumulative seconds) per evaluation]
Curve = Callable[[dict, int], list[tuple[float, float]]]

class _Trial:
    """What a Ray Tune scheduler reads of a trial (ASHA and FIFO read only its id)."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id

    def __hash__(self):
        return hash(self.trial_id)

    def __eq__(self, other):
        return isinstance(other, _Trial) and other.trial_id == self.trial_id


class RayStopper:
    """A Ray Tune scheduler (medsweep's build_scheduler, or Tune's FIFO default) on the simulated clock."""

    METRIC = "objective"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.scheduler.set_search_properties(self.METRIC, "max")

    def add(self, key: str) -> None:
        self.scheduler.on_trial_add(None, _Trial(key))

    def stop(self, key: str, trial: optuna.Trial, evaluation: int, value: float) -> bool:
        from ray.tune.schedulers import TrialScheduler

        result = {self.METRIC: value, "training_iteration": evaluation}
        return self.scheduler.on_trial_result(None, _Trial(key), result) == TrialScheduler.STOP

    def done(self, key: str, evaluation: int, value: float) -> None:
        self.scheduler.on_trial_complete(None, _Trial(key), {self.METRIC: value, "training_iteration": evaluation})


class PrunerStopper:
    """The study's own Optuna pruner (set on the study): what `study.optimize` with a pruner does."""

    def add(self, key: str) -> None:
        pass

    def stop(self, key: str, trial: optuna.Trial, evaluation: int, value: float) -> bool:
        return trial.should_prune()

    def done(self, key: str, evaluation: int, value: float) -> None:
        pass


@dataclass
class Side:
    """One tool's search: how many trials at once, its sampler and its early stopping."""

    name: str
    concurrency: Callable[[int], int]                    # slots -> trials run side by side
    sampler: Callable[[int], optuna.samplers.BaseSampler]  # seed -> sampler
    stopper: Callable[[int], object]                     # evaluations per trial -> RayStopper | PrunerStopper
    pruner: Callable[[int], optuna.pruners.BasePruner] = lambda evaluations: optuna.pruners.NopPruner()
    first: list[dict] = field(default_factory=list)      # configurations tried first (enqueued)


@dataclass
class Outcome:
    events: list[tuple[float, float]]  # (simulated seconds, value) of every evaluation, in time order
    trials: int
    stopped: int
    evaluations: int

    def best_by(self, seconds: float) -> float:
        values = [value for at, value in self.events if at <= seconds]
        return max(values) if values else float("-inf")

    def time_to(self, target: float) -> Optional[float]:
        """The simulated seconds of the first evaluation at or above `target` (None: never)."""
        return next((at for at, value in self.events if value >= target), None)


def simulate(side: Side, space: dict, curve: Curve, slots: int, budget_s: float, seed: int,
             evaluations: int) -> Outcome:
    """Run `side` on `slots` simulated slots until `budget_s` simulated seconds; every trial reports
    `evaluations` times. `space`: Optuna distributions by parameter name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Ray's ASHA draws each trial's bracket from numpy's global generator.
    np.random.seed(seed)
    random.seed(seed)
    study = optuna.create_study(direction="maximize", sampler=side.sampler(seed), pruner=side.pruner(evaluations))
    for point in side.first:
        study.enqueue_trial(point)
    stopper = side.stopper(evaluations)
    running = max(1, min(slots, side.concurrency(slots)))
    queue: list = []  # (time, order, trial number, evaluation index)
    order = itertools.count()
    live: dict[int, tuple[optuna.Trial, list]] = {}
    events, trials, stopped, reported = [], 0, 0, 0
    now = 0.0

    def start(at: float) -> None:
        nonlocal trials
        trial = study.ask(space)
        points = curve(trial.params, trial.number)
        live[trial.number] = (trial, points)
        stopper.add(str(trial.number))
        trials += 1
        heapq.heappush(queue, (at + points[0][1], next(order), trial.number, 0))

    for _ in range(running):
        start(now)
    while queue:
        now, _, number, index = heapq.heappop(queue)
        if now > budget_s:
            break
        trial, points = live[number]
        value = points[index][0]
        events.append((now, value))
        reported += 1
        trial.report(value, index + 1)
        last = index + 1 == len(points)
        halt = not last and stopper.stop(str(number), trial, index + 1, value)
        if last or halt:
            if last:
                stopper.done(str(number), index + 1, value)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if halt else optuna.trial.TrialState.COMPLETE,
                       values=None if halt else value)
            stopped += halt
            del live[number]
            start(now)
        else:
            heapq.heappush(queue, (now + points[index + 1][1] - points[index][1], next(order), number, index + 1))
    return Outcome(events, trials, stopped, reported)
