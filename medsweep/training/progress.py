"""Step progress of running trials, for the sweep console: steps done / total, every few seconds.

Evaluations are the trial's only Ray Tune results (each carries the metric and a checkpoint), and
they stay that way: ASHA counts rungs in `training_iteration`, which every `tune.report` advances,
and the leaderboard, the trackers and the checkpoint keeping all read every result. Progress goes
through a side channel instead: a small named Ray actor in the driver's job (num_cpus=0, so it
takes no trial's slot) that each trial's TrainerCallback tells, fire-and-forget, its optimizer
step and max_steps at most every PROGRESS_EVERY_S seconds. A named actor rather than a file in
the trial dir: it works the same when trials run on other nodes of a cluster.

Outside a Ray Tune trial (run_trial called directly, benchmarks) the callback is not added.
"""

from __future__ import annotations

import os
import time
import warnings

from transformers import TrainerCallback

ACTOR_NAME = "medsweep_progress"
# Cheap (one small message), but not per step: a step of a tiny model takes milliseconds. The
# environment variable (read in the trial's worker) lets a test see every step.
PROGRESS_EVERY_S = 5.0
EVERY_S_ENV = "MEDSWEEP_PROGRESS_EVERY_S"


class ProgressBoard:
    """The driver-side table of progress: trial id -> {step, total, started, updated}."""

    def __init__(self):
        self.trials: dict[str, dict] = {}

    def update(self, trial_id: str, step: int, total: int, now: float) -> None:
        entry = self.trials.setdefault(trial_id, {"started": now, "first_step": step})
        entry.update(step=step, total=total, updated=now)

    def snapshot(self) -> dict[str, dict]:
        return self.trials


def start_board():
    """The board actor of this driver (created once, reused by the seed re-runs' Tuner)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).options(name=ACTOR_NAME, get_if_exists=True).remote()


class BoardReader:
    """Reads the board from Tune's loop without ever blocking it.

    Each read returns the newest snapshot that has arrived and asks for the next. Waiting for an
    answer instead cost every sweep ~6 s before its first trial on the 2-core machine: the board's
    worker process starts as slowly as a trial's (imports), and the first wait ran before Tune
    started any trial, so the two starts queued instead of overlapping."""

    def __init__(self, board):
        self.board, self.pending, self.latest, self.dead = board, None, {}, False

    def read(self, wait_s: float = 0.0) -> dict[str, dict] | None:
        """The newest snapshot (empty until the first arrives), or None once the board has died
        (progress is a nicety: a dead board costs only the steps column)."""
        import ray

        if self.dead:
            return None
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=wait_s)
            if not ready:
                return self.latest
            try:
                self.latest = ray.get(self.pending)
            except Exception:  # noqa: BLE001  the actor failed to start or died
                self.dead = True
                return None
        self.pending = self.board.snapshot.remote()
        return self.latest

    def read_now(self, wait_s: float) -> dict[str, dict] | None:
        """The board as it is now, waiting up to wait_s twice: for the answer already asked for, then
        for a fresh one (the last table: a short trial may have started and ended since the last ask)."""
        self.read(wait_s)
        return self.read(wait_s)


class StepProgress(TrainerCallback):
    """Tells the board this trial's step count, at most every `every_s` seconds and at the end."""

    def __init__(self, trial_id: str, board, every_s: float = PROGRESS_EVERY_S):
        self.trial_id, self.board, self.every_s = trial_id, board, every_s
        self.last = 0.0

    def _send(self, state):
        self.last = time.time()
        # Fire and forget: the training loop never waits for the driver.
        return self.board.update.remote(self.trial_id, int(state.global_step), int(state.max_steps), self.last)

    def on_train_begin(self, args, state, control, **kwargs):
        self._send(state)

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.last >= self.every_s:
            self._send(state)

    def on_train_end(self, args, state, control, **kwargs):
        import ray

        # Once per trial, wait (briefly) for the last count to land, so the board has it before Tune
        # sees the trial finish and the console prints its final table.
        ray.wait([self._send(state)], timeout=5)  # a slow board costs only the final count


def callbacks() -> list:
    """[StepProgress] inside a Ray Tune trial whose driver runs a board, else []."""
    try:
        import ray
        from ray import tune
    except ImportError:
        return []
    if not ray.is_initialized():
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside a Tune session Ray warns and returns None
        try:
            trial_id = tune.get_context().get_trial_id()
        except Exception:  # noqa: BLE001
            trial_id = None
    if not trial_id:
        return []
    try:
        board = ray.get_actor(ACTOR_NAME)
    except ValueError:  # no board: a Tuner that is not medsweep's console
        return []
    return [StepProgress(trial_id, board, float(os.environ.get(EVERY_S_ENV, PROGRESS_EVERY_S)))]
