"""One driver per run dir, between real processes: a live holder makes a second
`python -m medsweep.run` refuse in one line naming it; the lock of a kill -9'd driver is gone with
it (flock), so it never blocks the resume. The full sweep version (two real sweeps, SIGTERM/Ctrl-C,
resume) is in test_faults.py (slow)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from medsweep.config import ConfigError
from medsweep.search import driver
from tests.conftest import ROOT, run_cli

HOLD = ("import sys, time\nfrom medsweep.search import driver\n"
        "with driver.exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def hold(run_dir) -> subprocess.Popen:
    """A real process holding the run dir the way a running driver does."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_driver_refuses_naming_the_first_and_a_killed_ones_lock_is_gone(tmp_path):
    run_dir = tmp_path / "run"
    first = hold(run_dir)
    try:
        proc = run_cli("+sweep=smoke", f"hydra.run.dir={run_dir}", timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on {socket.gethostname()}, started 20" in lines[0], proc.stderr
        assert "another medsweep driver is running a sweep" in lines[0]
        assert not (run_dir / "ray").exists() and not (run_dir / "data_summary.json").exists()  # nothing started
        # In-process too: the same one-line refusal.
        with pytest.raises(ConfigError, match=f"pid {first.pid}"), driver.exclusive(run_dir):
            pass
    finally:
        first.send_signal(signal.SIGKILL)  # a crashed driver: no cleanup ran
        first.wait(timeout=30)
    assert (run_dir / driver.LOCK_FILE).exists()  # the stale file is still there ...
    with driver.exclusive(run_dir):  # ... and does not block
        assert f"pid {os.getpid()}" in driver.holder(run_dir / driver.LOCK_FILE)
    with driver.exclusive(run_dir):  # released on exit: taken again at once
        pass
