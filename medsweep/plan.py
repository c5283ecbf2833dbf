"""The sweep plan: what a run optimises, over which space, on which rows, resolved once before Ray starts.

`search.preflight(config)` checks the config and the data and returns a Plan; every stage after it
(the sweep, promotion, reporting, the trackers) reads the objective, the search space, the row
counts and the splits from the plan instead of re-deriving them from the raw config. The config
itself is never rewritten: a multi-objective sweep's primary objective is `sweep.metrics[0]`
here, not a copy written over `sweep.metric`.

`objectives(config)` is the one reader of `sweep.metric(s)` / `sweep.mode(s)`, for code that holds
a saved config rather than a plan (a trial, the report of an old run dir, a promoted folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

from medsweep.evaluation.metrics import best_of, is_better
from medsweep.rundir import RunDir
from medsweep.search.space import SearchSpace


class Objective(NamedTuple):
    """One metric a sweep optimises, and which way (a pair: `for metric, mode in objectives(c)`)."""

    metric: str
    mode: str  # max | min

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    def better(self, candidate, incumbent) -> bool:
        """Whether `candidate` beats `incumbent` (ties to the candidate; NaN never wins)."""
        return is_better(candidate, incumbent, self.mode)

    def best(self, items: Iterable, score: Callable[[Any], Any]):
        """The one rule for "best": the item with the best score, ties to the later one (metrics.best_of)."""
        return best_of(items, score, self.mode)

    def best_value(self, values: Iterable):
        """The best of plain numbers, or None when none is defined."""
        best = best_of([v for v in values if v is not None], lambda v: v, self.mode)
        return None if best is None or best != best else best


def objectives(config: dict) -> list[Objective]:
    """The objectives of a config (whole, or its `sweep` section), the primary first; more than one
    means multi-objective. The only reader of sweep.metric / sweep.metrics."""
    sweep = config.get("sweep", config)
    if sweep.get("metrics"):
        return [Objective(m, mode) for m, mode in zip(sweep["metrics"], sweep["modes"])]
    return [Objective(sweep["metric"], sweep["mode"])]


def primary(config: dict) -> Objective:
    """The objective that drives everything single-metric: ASHA, checkpoints, the leaderboard."""
    return objectives(config)[0]


@dataclass
class Plan:
    """A sweep, resolved: built once by search.preflight and handed to every stage."""

    config: dict  # the resolved config (not rewritten)
    objectives: list[Objective]
    space: SearchSpace
    splits: Any  # data.DataSplits, loaded once by the driver
    run_dir: RunDir
    # The most rows any trial trains on (oversampling included): ASHA's rungs and the budget use it.
    num_train: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def primary(self) -> Objective:
        return self.objectives[0]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metric(self) -> str:
        return self.primary.metric

    @property
    def mode(self) -> str:
        return self.primary.mode

    def training_rows(self) -> tuple[dict, dict]:
        """(the rows the search trains on, every training row): each {"rows", "fingerprint"}; they
        differ when data.max_train_samples capped the search (promote.refit trains on all)."""
        from medsweep.data import fingerprint

        searched, every = self.splits.train, self.splits.all_train
        return ({"rows": len(searched), "fingerprint": fingerprint(searched)},
                {"rows": len(every), "fingerprint": fingerprint(every)})

    def with_config(self, config: dict) -> "Plan":
        """The same plan for another round's config (sweep.extend_edges moves ranges)."""
        return Plan(config=config, objectives=self.objectives, space=SearchSpace(config["sweep"]["search_space"]),
                    splits=self.splits, run_dir=self.run_dir, num_train=self.num_train, extra=dict(self.extra))
