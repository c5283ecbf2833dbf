"""Experiment tracking, the one entry point: run.py calls check / trial_callbacks / finish_callbacks /
log_sweep here, and they dispatch to the configured backend, a Tracker (trackers.py): Weights &
Biases (wandb_tracking.py, `tracker=wandb`) or MLflow (mlflow_tracking.py, `tracker=mlflow`).
The Ray callback that opens, feeds and finishes one tracker run per trial (TrialRuns) is shared: a
backend only says how to open a run, log an evaluation, close it and record the sweep.

Trial runs are opened and finished by a Ray Tune callback in the driver, not inside the trials:
ASHA stops a trial by ending its actor, whose training thread never reaches a `finally`, so a run
opened there would be left unfinished. The same callbacks go to every round of the search (the
follow-up round of sweep.extend_edges too), so the tracker sees every trial of the run.

Privacy: trial runs get only whitelisted numbers and the config; the sweep run gets the leaderboard,
plots, metrics and the model. Text (validation examples with predictions) is logged only when
`tracker.log_examples=true`.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from medsweep.evaluation.metrics import METRIC_NAMES, WORST_GROUP_METRIC_NAMES
from medsweep.plan import primary
from medsweep.reporting import tracker_process
from medsweep.reporting.trackers import Tracker
from medsweep.reporting.wandb_tracking import WandbTracker, wandb_enabled
from medsweep.rundir import RunDir
from medsweep.search.leaderboard import TrialResults
from medsweep.search.space import apply_overrides

# What a trial run's history gets from each evaluation; everything else in Ray's result is dropped.
TRIAL_HISTORY_KEYS = (*(f"val_{name}" for name in METRIC_NAMES + WORST_GROUP_METRIC_NAMES), "epoch", "evaluation",
                      "train_seconds")


def backend(config: dict) -> Tracker | None:
    """The configured tracker, or None (tracker=none, or W&B disabled)."""
    name = config["tracker"]["name"]
    if name == "wandb" and wandb_enabled(config):
        return WandbTracker()
    if name == "mlflow":
        from medsweep.reporting.mlflow_tracking import MlflowTracker  # mlflow is an optional extra

        return MlflowTracker()
    return None


def enabled(config: dict) -> bool:
    return backend(config) is not None


def check(config: dict) -> None:
    """Preflight: a tracker that cannot work fails before any trial starts. Raises ConfigError."""
    tracker = backend(config)
    if tracker is not None:
        tracker.check(config)


class TrialRuns(TrialResults):
    """One tracker run per trial, written from the driver as Ray reports results.

    The tracker's calls run in order in one child process (tracker_process.py), started at the first
    call: opening a W&B run took 0.3-0.6 s, and made in Tune's event loop it held every trial's
    results back (1,000 trials with W&B offline: ~10 minutes of the loop in tracker calls); made on
    a thread of the driver, W&B's and MLflow's Python work still took the driver's GIL, and every
    journal write of the Optuna study waited for it (200 trials on 32 slots with MLflow: 1.44x the
    bare Tuner's wall time; experiments/bench_cluster.py). finish_all() waits for every call to be
    done. A failing tracker call is a warning: it costs that trial's tracker run, never the sweep."""

    def __init__(self, config: dict, tracker: Tracker | None = None):
        objective = primary(config)  # a trial run's best evaluation is the one the sweep ranks by
        super().__init__(objective.metric, objective.mode)
        self.config = config
        self.tracker = tracker or backend(config)
        self.runs: set[str] = set()  # trials whose run is open (in the tracker process)
        self.writer = None

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment (tuner.pkl): the child process and open runs stay here.
        return {**self.__dict__, "writer": None, "runs": set()}

    def _later(self, call, *args) -> Future:
        if self.writer is None:
            self.writer = tracker_process.start(self.tracker)
        return tracker_process.submit(self.writer, call, *args)

    def _run(self, trial) -> None:
        if trial.trial_id not in self.runs:
            self.runs.add(trial.trial_id)
            self._later(tracker_process.open_trial, self.config, trial.trial_id,
                        apply_overrides(self.config, trial.config), trial.config)

    # --- Ray Tune callback hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result["training_iteration"]))  # the optimizer step, when the trial says
        self._run(trial)
        self._later(tracker_process.log_evaluation, trial.trial_id,
                    {k: result[k] for k in TRIAL_HISTORY_KEYS if k in result}, step)
        super().on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, self.end_status(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, "error")

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self.runs):
            self.finish(trial_id, "unfinished")
        self._later(tracker_process.settle_lost, self.config, {trial.trial_id for trial in trials})
        self.finish_all()

    # --- finishing ---------------------------------------------------------------------------------
    def finish(self, trial_id: str, status: str) -> None:
        if trial_id not in self.runs:
            return
        self.runs.discard(trial_id)
        best = self.best.get(trial_id, {})
        self._later(tracker_process.close_trial, trial_id, {k: best[k] for k in TRIAL_HISTORY_KEYS if k in best},
                    {"best_step": best.get("step"), "evaluations": self.evaluations.get(trial_id, 0),
                     "status": status}, status)

    def finish_all(self) -> None:
        """Close every run still open (an interrupted sweep), then wait for every tracker call:
        called when an experiment ends and from run.py's `finally`."""
        for trial_id in list(self.runs):
            self.finish(trial_id, "unfinished")
        if self.writer is not None:
            tracker_process.stop(self.writer)  # waits for the calls queued; the next call starts a new one
            self.writer = None


def trial_callbacks(config: dict) -> list:
    tracker = backend(config)
    if tracker is None:
        return []
    tracker.start(config)
    return [TrialRuns(config, tracker)]


def finish_callbacks(callbacks: list) -> None:
    for callback in callbacks:
        callback.finish_all()


def log_sweep(config: dict, run_dir: str | Path, report_dir: str | Path | None, splits=None) -> Path | None:
    """The tracker's record of the sweep (leaderboard, plots, promoted model). Returns W&B's folder of
    offline runs (run.py prints how to upload them), else None. `splits`: the driver's loaded
    data.DataSplits, for the validation examples of tracker.log_examples (loaded again if None)."""
    tracker = backend(config)
    if tracker is None:
        return None
    return tracker.log_sweep(config, RunDir.of(config, root=run_dir).resolved(),
                             None if report_dir is None else Path(report_dir), splits)
