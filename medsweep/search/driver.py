"""The sweep driver's hold on its run dir: one driver per run dir, and a clean stop on SIGTERM/Ctrl-C.

One driver per run dir: two `python -m medsweep.run` on the same run dir would both restore and
run the same Ray experiment, writing the same trials, leaderboard and promoted link. The lock is an
flock(2) on `<run dir>/.medsweep-driver.lock`, so the kernel drops it when the driver dies, however
it dies: a lock left by a killed driver never blocks the resume. The file also says who holds it
(pid, host, start time) for the refusal message; that text is only ever shown, never trusted.

A clean stop: Ray Tune stops a sweep gracefully on SIGINT (Ctrl-C): it stops the trials, writes
the experiment state and returns, so the same command resumes. SIGTERM (what `kill`, systemd and
batch schedulers send) would otherwise end the driver at once (`ray.init` makes it `sys.exit`):
here it is turned into that same graceful stop. A sweep that stopped before its trials finished is
not promoted; the CLI says how far it got and exits 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from medsweep.config import ConfigError

LOCK_FILE = ".medsweep-driver.lock"
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(Exception):
    """The sweep was stopped by a signal before its trials finished: resumable, not promotable."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signal_name, 130)


@contextmanager
def exclusive(run_dir: str | Path):
    """Hold the run dir's driver lock for the block; another live holder is a one-line ConfigError."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's processes (close-on-exec)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another medsweep driver is running a sweep in {run_dir} ({holder(path)}); "
                              f"wait for it to finish or stop it, then run the same command to resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": datetime.now(UTC).isoformat(timespec="seconds")}).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def holder(path: Path) -> str:
    """Who holds the lock, as its file says (pid, host, start time), for a person to read."""
    try:
        info = json.loads(path.read_text())
        return f"pid {int(info['pid'])} on {str(info['host'])[:80]}, started {str(info['started'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"


class Stop:
    """SIGTERM and Ctrl-C at any phase of a run (checks, search, seed re-runs and refit, promotion,
    report) stop it cleanly and resumably; remembers the signal and the phase it landed in.

    During a Tuner's fit, Ray Tune owns SIGINT: it stops the trials gracefully, saves the experiment
    and returns; SIGTERM is turned into that same SIGINT. Outside a fit, both raise KeyboardInterrupt.
    Tune hands the previous handler (ours) back only when a SIGINT stopped the fit, and otherwise
    leaves its own (now deaf) handler installed: `fit` below reads which one it finds, then installs
    ours again. `ray.init` installs its own SIGTERM handler (an exit with status 15): `install` again
    after it."""

    active: "Stop | None" = None  # the driver's, while a run holds it

    def __init__(self):
        self.signal_name: str | None = None
        self.phase = "checks"
        self.previous = signal.getsignal(signal.SIGTERM)
        self.previous_sigint = signal.getsignal(signal.SIGINT)
        self.install()
        Stop.active = self

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame):
        # Outside Tune's run (or a second Ctrl-C): stop now, as Python would.
        self.signal_name = self.signal_name or "SIGINT"
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame):
        self.signal_name = "SIGTERM"
        # Whatever handles SIGINT now: Tune's graceful stop during fit(), KeyboardInterrupt otherwise.
        signal.raise_signal(signal.SIGINT)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)
        signal.signal(signal.SIGINT, self.previous_sigint)
        if Stop.active is self:
            Stop.active = None

    def after_fit(self) -> None:
        """After a Tuner's fit: note a SIGINT Tune handled, and take SIGINT and SIGTERM back."""
        tune_handles_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0")
        # ==, not `is`: a bound method is a new object on every attribute access.
        if tune_handles_sigint and signal.getsignal(signal.SIGINT) == self._on_sigint:
            self.signal_name = self.signal_name or "SIGINT"
        self.install()

    def check(self, results, planned: int, what: str = "sweep") -> None:
        """Raise Interrupted if a signal came, or the experiment stopped before every trial finished
        (completed, stopped early by the scheduler, or errored)."""
        unfinished = len(results) - results.num_terminated - results.num_errors
        if unfinished <= 0 and self.signal_name is None:
            return
        name = self.signal_name or "SIGINT"
        raise Interrupted(f"{what} interrupted ({name}) before its {planned} trial(s) finished, nothing promoted; "
                          f"run the same command to resume (finished trials are kept)", name)

    def interrupted(self) -> Interrupted:
        """The Interrupted for a KeyboardInterrupt outside a fit, naming the phase it stopped."""
        name = self.signal_name or "SIGINT"
        kept = ("nothing was promoted; the previous promoted model (if any) is unchanged" if self.phase != "report"
                else "the model is promoted; rerun the report with: python -m medsweep.report <run dir>")
        return Interrupted(f"{self.phase} interrupted ({name}): {kept}; run the same command to resume "
                           f"(finished trials are kept)", name)


def fit(tuner, planned: int, what: str = "sweep"):
    """`tuner.fit()` under the driver's Stop (if one is active): a signal during the fit, or trials
    left unfinished, end the run as Interrupted (resumable) instead of going on with partial results."""
    results = tuner.fit()
    stop = Stop.active
    if stop is not None:
        stop.after_fit()
        stop.check(results, planned, what)
    return results
