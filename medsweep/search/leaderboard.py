"""The local leaderboard: `<run dir>/leaderboard.csv` and `leaderboard.md`, rewritten as trials end.

Ray calls this callback in the driver, so the files are written by one process only.

Each rewrite costs time in proportion to the rows, so rewriting on every trial's end grows with the
square of the trials (10,000 trials: ~15 minutes of the driver's loop, experiments/bench_cluster.py).
Rows are kept in memory as trials end and the files rewritten at most every WRITE_INTERVAL_S
(and always when the experiment ends): a reader sees every trial that ended over a second ago.
A driver killed between two writes loses nothing: Tune's experiment state still lists those trials as
finished, and the next driver's first write (at its end) rebuilds their rows from their result.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

from ray.tune import Callback

from medsweep.evaluation.metrics import is_better
from medsweep.markdown import short, table
from medsweep.rundir import RunDir, atomic_write
from medsweep.search import budget
from medsweep.search.space import flatten_values

SCORE_COLUMNS = ("val_f1_macro", "val_auroc", "val_accuracy")
TEXT_COLUMNS = ("trial_id", "metric", "status", "error")
WRITE_INTERVAL_S = 1.0


def error_reason(trial) -> str:
    """The exception's last line ("FloatingPointError: ... diverged"), from Ray's error record."""
    def from_error():
        return str(trial.get_error() or "")

    def from_file():
        return Path(trial.error_file).read_text() if trial.error_file else ""

    for read in (from_error, from_file):
        try:
            lines = [line for line in read().strip().splitlines() if line.strip()]
        except Exception:  # a missing or half-written record: try the next source
            continue
        if lines:
            return lines[-1].strip()
    return "unknown error"


def _parse(text: str):
    """Numbers back from a CSV cell, so that restored rows sort with new ones."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def end_status(last_result: dict | None) -> str:
    """How a trial that ended without an error ended, by its last result: "completed" when that was
    its final step (trials report `final`), else "early_stopped" (a scheduler stopped it). The one
    rule for the leaderboard, the trackers and the Optuna study."""
    return "completed" if last_result and last_result.get("final") is True else "early_stopped"


class TrialResults(Callback):
    """Per trial, as Ray reports: how many evaluations, the last result and the best one (by the
    sweep's metric and mode). The base of the callbacks that summarise trials (this leaderboard,
    the W&B trial runs in tracking.py)."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.best: dict[str, dict] = {}  # trial id -> best result so far
        self.last: dict[str, dict] = {}
        self.evaluations: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        self.evaluations[tid] = self.evaluations.get(tid, 0) + 1
        self.last[tid] = result
        if tid not in self.best or is_better(result.get(self.metric), self.best[tid].get(self.metric), self.mode):
            self.best[tid] = result

    def end_status(self, trial_id: str) -> str:
        """How a trial that ended without an error ended (see end_status)."""
        return end_status(self.last.get(trial_id))

    def recover(self, trial) -> None:
        """A trial that reported its last evaluation just before the driver stopped is resumed by the
        next driver and ends at once, without a new result (its checkpoint is past its last step):
        its results are read back from its result.json, so its row keeps its numbers and status."""
        # trial.path: the trial's folder in the experiment's storage, where result.json is kept (a
        # restored trial's local_path is a staging folder of the new Ray session, without it).
        folder = getattr(trial, "path", None) or getattr(trial, "local_path", None)
        if trial.trial_id in self.last or not folder:
            return
        try:
            lines = (Path(folder) / "result.json").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:  # a line cut short by the driver's stop
                continue
            if isinstance(result, dict):
                TrialResults.on_trial_result(self, None, None, trial, result)


class Leaderboard(TrialResults):
    def __init__(self, run_dir: str | Path, metric: str, mode: str, param_names: list[str]):
        super().__init__(metric, mode)
        self.run_dir = Path(run_dir)
        self.param_names = param_names
        self.rows: dict[str, dict] = {}  # finished trials only
        self.written_at = 0.0  # time.monotonic() of the last rewrite
        self.dirty = False  # rows not yet in the files
        self.load_existing()

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    # --- Ray Tune callback hooks -----------------------------------------------------------------
    def setup(self, **info):
        self.load_existing()

    def load_existing(self) -> None:
        """A resumed sweep keeps the rows of the trials that finished before it stopped."""
        path = self.files.leaderboard_csv
        if not path.exists():
            return
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                self.rows[row["trial_id"]] = {k: v if k in TEXT_COLUMNS else _parse(v) for k, v in row.items()}

    def on_step_end(self, iteration, trials, **info):
        # Tune's loop turns several times a second: rows held back by the interval reach the files here.
        if self.dirty and time.monotonic() - self.written_at >= WRITE_INTERVAL_S:
            self.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.recover(trial)
        self._finish(trial, self.end_status(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "error", error_reason(trial)[:200])

    def on_experiment_end(self, trials, **info):
        # When sweep.time_budget_s ends the search, Tune stops the running trials all at once
        # without on_trial_complete: they get their rows here.
        if budget.exhausted(self.run_dir):
            for trial in trials:
                if trial.trial_id not in self.rows and trial.trial_id in self.best:
                    self._finish(trial, "budget_stopped", write=False)
        # Trials that ended in a driver killed before its next rewrite: a resumed experiment lists
        # them as finished and never calls on_trial_complete for them again.
        for trial in trials:
            if trial.trial_id not in self.rows and trial.status in ("TERMINATED", "ERROR"):
                self.recover(trial)
                if trial.status == "ERROR":
                    self._finish(trial, "error", error_reason(trial)[:200], write=False)
                elif trial.trial_id in self.last:
                    self._finish(trial, self.end_status(trial.trial_id), write=False)
        self.write()

    # --- table -----------------------------------------------------------------------------------
    def _finish(self, trial, status: str, error: str = "", write: bool | None = None) -> None:
        """The trial's row; the files are rewritten when WRITE_INTERVAL_S has passed (write=None),
        now (True) or not (False)."""
        tid = trial.trial_id
        best = self.best.get(tid, {})
        params = flatten_values(trial.config)
        row = {"trial_id": tid}
        row.update({name: params.get(name) for name in self.param_names})
        row.update({
            "metric": self.metric,
            "best_value": best.get(self.metric),
            **{col: best.get(col) for col in SCORE_COLUMNS},
            "best_step": best.get("step"),
            "evaluations": self.evaluations.get(tid, 0),
            "status": status,
            "error": error,
        })
        self.rows[tid] = row
        self.dirty = True
        if write or (write is None and time.monotonic() - self.written_at >= WRITE_INTERVAL_S):
            self.write()

    def sorted_rows(self) -> list[dict]:
        def key(row):
            value = row["best_value"]
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            return (missing, 0.0 if missing else (-value if self.mode == "max" else value))

        return sorted(self.rows.values(), key=key)

    def columns(self) -> list[str]:
        return ["trial_id", *self.param_names, "metric", "best_value", *SCORE_COLUMNS, "best_step", "evaluations",
                "status", "error"]

    def write(self) -> None:
        # atomic_write: readers (a dashboard, `watch cat`) never see a half-written table.
        rows = self.sorted_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns())
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.files.leaderboard_csv, buffer.getvalue())

        lines = [f"# Leaderboard ({self.metric}, {'higher' if self.mode == 'max' else 'lower'} is better)", "",
                 *table(["rank", *self.columns()],
                        [[rank, *(short(row[c]) for c in self.columns())] for rank, row in enumerate(rows, 1)])]
        atomic_write(self.files.leaderboard_md, "\n".join(lines) + "\n")
        self.written_at, self.dirty = time.monotonic(), False
