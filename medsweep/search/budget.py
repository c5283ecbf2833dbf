"""sweep.time_budget_s: the wall time of the whole run, of which the search gets what the seed
re-runs and promotion do not need.

A Ray Tune Stopper (Tune stops every trial at once when stop_all() says so, as it does for
TuneConfig(time_budget_s)): it counts the time the search has run, keeps the count in
`<run dir>/budget.json` (so a killed and resumed sweep goes on counting, and the time the driver was
down is not counted), and ends the search once the time used plus the reserve reaches the budget.
The reserve is estimated from the measured trials: the seed re-runs are full-length trials, run
`max_concurrent` at a time, each costing the median seconds per evaluation times the evaluations of
a full trial; promotion adds PROMOTION_S. The search never stops before one trial has reported an
evaluation, so a budgeted sweep always ends with a model to promote (a budget shorter than one
evaluation is overrun by that evaluation).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.stopper import Stopper

from medsweep.rundir import RunDir, atomic_write

# Promotion after the search: scoring the test split, 1,000 bootstrap resamples, writing the version
# and the report: 10-12 s for +sweep=smoke on the 2-core machine (the end of the sweep to the report
# line); rounded up, since a model promoted late beats none.
PROMOTION_S = 15.0
# How often the count is written (a kill loses at most this much of it).
WRITE_EVERY_S = 1.0
# Tune registers a reported checkpoint a moment after the result; stopping all trials in between
# drops it. The budget waits for these registrations (at most this long after a result).
SAVE_GRACE_S = 10.0
# budget file -> {trial id: when it reported a checkpoint Tune has not registered yet}. Module state
# because the stopper and the callback are pickled apart (a resumed sweep unpickles them separately).
_SAVING: dict[str, dict[str, float]] = {}


def read(run_dir: str | Path) -> dict:
    try:
        return json.loads(RunDir(Path(run_dir)).budget.read_text())
    except (OSError, ValueError):
        return {}


def exhausted(run_dir: str | Path) -> bool:
    """Whether the budget ended this run's search."""
    return bool(read(run_dir).get("stopped"))


def reruns(config: dict) -> int:
    """How many full-length seed re-runs promotion will train (seeds.rerun_with_seeds)."""
    promote, sweep = config["promote"], config["sweep"]
    if not promote["enabled"] or sweep["num_trials"] <= 1:
        return 0
    return min(promote["top_k"], sweep["num_trials"]) * len(promote["seeds"])


class SearchBudget(Stopper):
    def __init__(self, limit_s: float, run_dir: str | Path, reruns: int, concurrency: int, full_evaluations: int):
        self.limit_s = float(limit_s)
        self.path = RunDir(Path(run_dir)).resolved().budget
        self.reruns, self.concurrency, self.full_evaluations = reruns, max(1, concurrency), full_evaluations
        self._state = None  # loaded from the file on first use (fresh, or restored by Tune)
        self._last_check = None
        self._written = 0.0

    def __getstate__(self):
        # Tune pickles the stopper when the experiment starts: the count lives in the file, not the pickle.
        return dict(self.__dict__, _state=None, _last_check=None, _written=0.0)

    def start(self) -> None:
        """A new sweep (not a resumed one): nothing used yet."""
        self._state = {"limit_s": self.limit_s, "used_s": 0.0, "seconds_per_evaluation": {}, "stopped": False}
        self._write()

    def _load(self) -> dict:
        if self._state is None:
            state = {"limit_s": self.limit_s, "used_s": 0.0, "seconds_per_evaluation": {}, "stopped": False}
            state.update({k: v for k, v in read(self.path.parent).items() if k != "limit_s"})
            state["stopped"] = False  # a resumed sweep checks again
            self._state = state
        return self._state

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self._state, indent=2))
        self._written = time.time()

    def reserve_s(self) -> float | None:
        """Seconds the seed re-runs and promotion need, or None before any trial has reported."""
        measured = list(self._load()["seconds_per_evaluation"].values())
        if not measured:
            return None
        full_trial = statistics.median(measured) * self.full_evaluations
        return math.ceil(self.reruns / self.concurrency) * full_trial + PROMOTION_S

    def __call__(self, trial_id, result) -> bool:
        # Every result: the trial's seconds per evaluation so far (its start-up included).
        iterations, seconds = result.get("training_iteration"), result.get("time_total_s")
        if iterations and seconds:
            state = self._load()
            state["seconds_per_evaluation"][trial_id] = seconds / iterations
            state.setdefault("first_result_s", state["used_s"])
        return False

    def saving(self) -> bool:
        now = time.time()
        return any(now - at < SAVE_GRACE_S for at in _SAVING.get(str(self.path), {}).values())

    def stop_all(self) -> bool:
        state, now = self._load(), time.time()
        if self._last_check is not None:
            state["used_s"] += now - self._last_check
        self._last_check = now
        reserve = self.reserve_s()
        stop = reserve is not None and state["used_s"] + reserve >= self.limit_s and not self.saving()
        if stop and not state["stopped"]:
            state.update(stopped=True, reserve_s=reserve)
            print(f"[medsweep] time budget: the search stops after {state['used_s']:.0f}s of {self.limit_s:.0f}s, "
                  f"keeping {reserve:.0f}s for {self.reruns} seed re-run(s) and promotion", flush=True)
            self._write()
        elif now - self._written >= WRITE_EVERY_S:
            self._write()
        return stop


class CheckpointsInFlight(Callback):
    """Tells the budget which trials' reported checkpoints Tune has yet to register (see _SAVING)."""

    def __init__(self, run_dir: str | Path):
        self.key = str(RunDir(Path(run_dir)).resolved().budget)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _SAVING.setdefault(self.key, {})[trial.trial_id] = time.time()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        _SAVING.get(self.key, {}).pop(trial.trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _SAVING.get(self.key, {}).pop(trial.trial_id, None)

    on_trial_error = on_trial_complete
