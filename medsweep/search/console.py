"""The live console of a sweep: a one-line header and a compact trial table, printed by the driver.

Built on Ray Tune's public ProgressReporter interface from what each trial already carries (its
status, sampled config and last reported result), not from Ray's own table code: Ray's CLIReporter
puts seven lines above its table (scheduler brackets, resources, the best trial with every parameter
at full float precision, a "Result logdir" under /tmp/ray that is not where the results are) and
its table helpers are private.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter

from ray.tune import ProgressReporter

from medsweep.markdown import short
from medsweep.search.leaderboard import error_reason
from medsweep.search.space import flatten_values
from medsweep.training import progress


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]


# Promotion (test-split scoring with bootstrap CIs, the model card) and the report, for the ETA: ~20-30 s
# for the smoke sweep's tiny model on the 2-core development machine; a rough constant, not measured per run.
PROMOTION_S = 30.0


def eta(trials, board: dict, planned: int | None, concurrency: int, later_trials: int, later_s: float) -> float | None:
    """Seconds until the sweep is done, from the steps the trials have run so far: the steps left of
    the running trials, of the trials not started yet (`planned` in all) and of `later_trials`
    full-length trials after this experiment (the seed re-runs), at the measured steps per second of
    one trial times `concurrency`, plus `later_s` (promotion). An upper bound under ASHA, which may
    stop trials early. None until some trial has run steps for a while."""
    rates, totals, left = [], [], 0
    for trial in trials:
        entry = board.get(trial.trial_id)
        if entry is None:
            continue
        totals.append(entry["total"])
        ran, took = entry["step"] - entry["first_step"], entry["updated"] - entry["started"]
        if ran > 0 and took > 0:
            rates.append(ran / took)
        if trial.status in ("RUNNING", "PENDING", "PAUSED"):
            left += max(entry["total"] - entry["step"], 0)
    if not rates or not totals:
        return None
    per_trial = sum(totals) / len(totals)
    unseen = sum(1 for trial in trials if trial.trial_id not in board and trial.status in ("PENDING", "RUNNING"))
    not_created = max((planned or len(trials)) - len(trials), 0)
    left += (unseen + not_created + later_trials) * per_trial
    rate = sum(rates) / len(rates) * max(concurrency, 1)
    return left / rate + later_s


class SweepConsole(ProgressReporter):
    """`parameters`: {config key ("trainer.learning_rate"): column title}; `metrics`:
    {result key: column title}. Trials are listed best first by `metric`.

    With a progress board (training/progress.py) the table shows each trial's optimizer steps done /
    total and the header an ETA for everything left (this experiment, `later_trials` more
    full-length trials, `later_s` seconds of promotion), refreshed every `every_s` seconds."""

    def __init__(self, parameters: dict[str, str], metrics: dict[str, str], metric: str, mode: str,
                 every_s: float = 30.0, max_rows: int = 20, max_errors: int = 5, stream=None,
                 concurrency: int = 1, later_trials: int = 0, later_s: float = 0.0, board: bool = True):
        self.parameters, self.metrics = parameters, metrics
        self.metric, self.mode = metric, mode
        self.every_s, self.max_rows, self.max_errors = every_s, max_rows, max_errors
        self.stream = stream
        self.start_time, self.total = time.time(), None
        self.last_report = 0.0
        self.concurrency, self.later_trials, self.later_s = concurrency, later_trials, later_s
        self.use_board, self.board, self.progress = board, None, {}

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        self.start_time = start_time or self.start_time
        self.total = total_samples
        if self.use_board:
            # Called by Tune in the driver after Ray is up, before the first trial starts. The board's
            # worker starts beside the first trial's; steps a trial tells it before then wait in the
            # actor's queue, so none is lost.
            self.board = progress.BoardReader(progress.start_board())
            self.board.read()

    def should_report(self, trials, done: bool = False) -> bool:
        return done or time.time() - self.last_report >= self.every_s

    def value(self, trial):
        value = (trial.last_result or {}).get(self.metric)
        return value if isinstance(value, (int, float)) and not math.isnan(value) else None

    def ranked(self, trials) -> list:
        def key(trial):
            value = self.value(trial)
            return (value is None, 0.0 if value is None else (-value if self.mode == "max" else value))

        return sorted(trials, key=key)

    def header(self, trials) -> str:
        counts = Counter(trial.status.lower() for trial in trials)
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        total = f"/{self.total}" if self.total else ""
        line = f"[medsweep] {elapsed(time.time() - self.start_time)}  trials {len(trials)}{total} ({states})"
        if any(trial.status == "RUNNING" for trial in trials):
            # Trials side by side now (at most max_concurrent; fewer when CPUs are short).
            running = sum(trial.status == "RUNNING" for trial in trials)
            left = eta(trials, self.progress, self.total, min(running, self.concurrency), self.later_trials, self.later_s)
            if left is not None:
                line += f"  ETA {elapsed(left)}" + (" (incl. seed re-runs, promotion)" if self.later_trials else "")
        best = next(iter(self.ranked(trials)), None)
        if best is not None and self.value(best) is not None:
            line += f"  current best {self.metric}={self.value(best):.4f} (trial {best.trial_id})"
        return line

    def rows(self, trials, done: bool) -> list[str]:
        shown = self.ranked(trials) if done else self.ranked(trials)[:self.max_rows]
        header = ["trial", "status", *(["steps"] if self.board is not None else []), *self.parameters.values(),
                  *self.metrics.values()]
        rows = []
        for trial in shown:
            params = flatten_values(trial.config or {})
            result = trial.last_result or {}
            entry = self.progress.get(trial.trial_id)
            # The board's count lags the last evaluation by at most PROGRESS_EVERY_S: never show fewer steps.
            done = max(entry["step"], int(result.get("step") or 0)) if entry else 0
            steps = [f"{done}/{entry['total']}" if entry else ""] if self.board is not None else []
            rows.append([trial.trial_id, trial.status, *steps, *(short(params.get(name)) for name in self.parameters),
                         *(short(result.get(key)) for key in self.metrics)])
        lines = text_table(header, rows)
        if len(shown) < len(trials):
            lines.append(f"... {len(trials) - len(shown)} more trial(s)")
        return lines

    def errors(self, trials, done: bool) -> list[str]:
        failed = [t for t in trials if t.status == "ERROR"]
        shown = failed if done else failed[:self.max_errors]
        return [f"  error in trial {t.trial_id}: {error_reason(t)}" for t in shown]

    def report(self, trials, done: bool, *sys_info: str):
        self.last_report = time.time()
        if self.board is not None:
            # The last table waits (briefly) for the final counts; Tune's loop is over by then.
            snapshot = self.board.read_now(wait_s=2.0) if done else self.board.read()
            if snapshot is None:  # the board died: no steps column from now on
                self.board = None
            else:
                self.progress = snapshot  # the reader keeps the newest answer itself
        lines = [self.header(trials), *(self.rows(trials, done) if trials else []), *self.errors(trials, done)]
        print("\n".join(lines) + "\n", file=self.stream or sys.stdout, flush=True)
