"""The sweep console: steps done / total of each running trial and an ETA, before the first evaluation."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest
import ray

from medsweep.search import console as console_module
from medsweep.search import sweep
from medsweep.search.console import SweepConsole, eta
from medsweep.training import progress
from tests.conftest import TINY, compose_config


def trial(trial_id, status):
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_eta_counts_running_unstarted_and_later_trials_at_the_measured_rate():
    # Two trials of 100 steps: one half done in 10 s (5 steps/s), one finished; 2 more planned, 3 seed
    # re-runs after, 30 s of promotion; one trial at a time.
    board = {"a": {"step": 50, "first_step": 0, "total": 100, "started": 0.0, "updated": 10.0},
             "b": {"step": 100, "first_step": 0, "total": 100, "started": 0.0, "updated": 20.0}}
    trials = [trial("a", "RUNNING"), trial("b", "TERMINATED")]
    left = eta(trials, board, planned=4, concurrency=1, later_trials=3, later_s=30.0)
    assert left == pytest.approx((50 + 2 * 100 + 3 * 100) / 5.0 + 30.0)
    # Twice the concurrency, half the training time.
    assert eta(trials, board, 4, 2, 3, 30.0) == pytest.approx((50 + 500) / 10.0 + 30.0)
    # No step measured yet: no guess.
    assert eta([trial("a", "RUNNING")], {}, 4, 1, 0, 0.0) is None


@pytest.fixture
def ray_local(monkeypatch):
    monkeypatch.setenv(progress.EVERY_S_ENV, "0")  # read by the trial's worker: report every step
    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


class SlowBoard(progress.ProgressBoard):
    def snapshot(self):
        time.sleep(0.5)  # an answer Tune's loop must not wait for
        return super().snapshot()


def test_the_board_reader_never_blocks_and_drops_a_dead_board(ray_local):
    board = ray.remote(num_cpus=0)(SlowBoard).remote()
    board.update.remote("a", 5, 10, 0.0)
    reader = progress.BoardReader(board)
    started = time.time()
    # The actor's worker is still starting (seconds) and each answer takes 0.5 s: reads return at once,
    # with what has arrived so far (nothing yet).
    assert reader.read() == {} and reader.read() == {}
    assert time.time() - started < 0.3
    assert reader.read(wait_s=60)["a"]["step"] == 5
    board.update.remote("a", 7, 10, 1.0)
    # Each read returns the answer to the request sent by the read before it, and asks again.
    assert reader.read(wait_s=60)["a"]["step"] == 5
    assert reader.read(wait_s=60)["a"]["step"] == 7
    # The last table's read asks afresh: a trial that started and ended since the last ask is in it.
    board.update.remote("b", 10, 10, 2.0)
    assert reader.read_now(wait_s=60)["b"]["step"] == 10
    ray.kill(board)
    assert reader.read(wait_s=60) is None and reader.read() is None


# ~25 s idle, 45-100 s under load (Ray start, a worker, a trial); the default suite checks the same channel
# end to end on the shared smoke sweep (tests/search/test_sweep.py: every trial ends at 150/150 steps).
@pytest.mark.slow
def test_console_shows_steps_and_eta_of_a_running_trial_before_its_first_evaluation(tmp_path, ray_local, monkeypatch):
    # One real trial of 60 optimizer steps and a single evaluation, at its end.
    config = compose_config(TINY + ["trainer.epochs=1", "data.max_train_samples=960", "cluster.num_cpus=1"],
                            run_dir=tmp_path)
    plan = sweep.preflight(config)
    stream = io.StringIO()
    built = []

    def fast_console(*args, **kwargs):
        reporter = sweep_console(*args, **kwargs)
        reporter.every_s, reporter.stream = 0.2, stream
        built.append(reporter)
        return reporter

    sweep_console = sweep.console
    monkeypatch.setattr(sweep, "console", fast_console)
    sweep.run_sweep(plan)
    out = stream.getvalue()
    assert isinstance(built[0], SweepConsole) and built[0].later_s == console_module.PROMOTION_S

    tables = [block.splitlines() for block in out.strip().split("\n\n")]
    header = tables[0][1].split()
    assert header[:3] == ["trial", "status", "steps"]
    # A report while the trial ran, before its first evaluation: steps k/60 with 0 < k < 60, no evals yet.
    running = [(block[0], row) for block in tables for row in block[2:] if " RUNNING " in row]
    mid = [(head, row) for head, row in running if (m := re.search(r" (\d+)/60\b", row)) and 0 < int(m.group(1)) < 60]
    assert mid, out[-3000:]
    assert any(re.search(r"ETA \d+:\d\d:\d\d", head) for head, _ in mid), out[-3000:]
    # The last report: the finished trial with every step.
    assert " 60/60 " in tables[-1][2], out[-2000:]
