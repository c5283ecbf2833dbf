"""The live console table of a sweep: Ray's trial table under a one-line header.

Ray's CLIReporter puts seven lines above its table: scheduler brackets, logical resource usage,
the best trial with every parameter at full float precision and a "Result logdir" under
/tmp/ray that is not where the results are. One line says what a sweep user needs.
"""

from __future__ import annotations

import time
from collections import Counter

from ray.tune import CLIReporter
from ray.tune.progress_reporter import _trial_errors_str, _trial_progress_table


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"


class CompactReporter(CLIReporter):
    def header(self, trials) -> str:
        counts = Counter(trial.status.lower() for trial in trials)
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        total = f"/{self._total_samples}" if self._total_samples else ""
        line = f"[medsweep] {_elapsed(time.time() - self._start_time)}  trials {len(trials)}{total} ({states})"
        best, metric = self._current_best_trial(trials)
        if best is not None:
            value = best.last_result.get(metric)
            line += f"  current best {metric}={value:.4f} (trial {best.trial_id})" if isinstance(value, float) else ""
        return line

    def report(self, trials, done: bool, *sys_info: str):
        table = _trial_progress_table(
            trials, metric_columns=self._metric_columns, parameter_columns=self._parameter_columns,
            max_rows=None if done else self._max_progress_rows, metric=self._metric, mode=self._mode,
            sort_by_metric=self._sort_by_metric, max_column_length=self._max_column_length,
        ) if trials else []
        errors = _trial_errors_str(trials, max_rows=None if done else self._max_error_rows)
        self._print("\n".join([self.header(trials), *table, *([errors] if errors else [])]) + "\n")
