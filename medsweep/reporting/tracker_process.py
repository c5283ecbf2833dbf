"""The child process that makes a sweep's tracker calls (tracking.TrialRuns), in the order given.

A tracker's Python work (wandb.init, MLflow's SQLAlchemy store) made in the driver, even on a
thread, takes the GIL that Tune's event loop and the Optuna journal's writes need. Here it runs in
a process of its own, spawned (never forked: the driver holds Ray's threads), which holds the
tracker and the open trial runs; the driver sends trial ids, values and the config.

The process ends when stop() has drained it, or when the driver is gone (a kill -9 must not leave
it behind holding runs open: the resumed sweep closes them, tracker.settle_lost).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger(__name__)

# In the child: the tracker and trial id -> its open run.
_tracker = None
_runs: dict = {}


def start(tracker) -> ProcessPoolExecutor:
    # One worker: the calls run in the order they were submitted (a run is opened before it is fed).
    # `resumed` goes along by value: an MLflow tracker marks itself resumed when unpickled (how Tune
    # hands a resumed sweep its callbacks), and it is unpickled here for every sweep.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_setup, initargs=(tracker, getattr(tracker, "resumed", False), os.getpid()))


def submit(writer: ProcessPoolExecutor, call, *args) -> Future:
    try:
        return writer.submit(_guarded, call, *args)
    except (BrokenProcessPool, RuntimeError) as exc:  # the child died (killed, out of memory): no more tracking
        log.warning("tracker process unavailable (%s: %s); this call is dropped", type(exc).__name__, exc)
        done = Future()
        done.set_result(None)
        return done


def stop(writer: ProcessPoolExecutor) -> None:
    """Wait for every call submitted, then end the process."""
    try:
        writer.shutdown(wait=True)
    except BrokenProcessPool as exc:
        log.warning("tracker process ended early (%s); some tracker calls were lost", exc)


# --- in the child ------------------------------------------------------------------------------
def _setup(tracker, resumed: bool, driver_pid: int) -> None:
    global _tracker
    _tracker = tracker
    if hasattr(tracker, "resumed"):
        tracker.resumed = resumed
    threading.Thread(target=_exit_with, args=(driver_pid,), daemon=True, name="medsweep-driver-watch").start()


def _exit_with(driver_pid: int) -> None:
    while os.getppid() == driver_pid:
        time.sleep(1.0)
    os._exit(0)


def _guarded(call, *args):
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001  a tracker's failure must not cost the sweep
        log.warning("tracker call %s failed (%s: %s)", call.__name__, type(exc).__name__, exc)
        return None


def open_trial(config: dict, trial_id: str, resolved: dict, sampled: dict) -> None:
    _runs[trial_id] = _tracker.open_trial(config, trial_id, resolved, sampled)


def log_evaluation(trial_id: str, values: dict, step: int) -> None:
    if _runs.get(trial_id) is not None:  # None: opening it failed (warned once, then)
        _tracker.log_evaluation(_runs[trial_id], values, step)


def close_trial(trial_id: str, best: dict, summary: dict, status: str) -> None:
    run = _runs.pop(trial_id, None)
    if run is not None:
        _tracker.close_trial(run, best, summary, status)


def settle_lost(config: dict, trial_ids: set[str]) -> int:
    return _tracker.settle_lost(config, trial_ids)
