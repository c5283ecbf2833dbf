"""Shared fixtures: configs composed from the real conf/ tree, shrunk to seconds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tiny random BERT on a few dozen real abstracts: trains in a couple of seconds on one core.
TINY = [
    "model=tiny_random",
    "data.max_train_samples=96",
    "data.max_eval_samples=60",
    "trainer.epochs=2",
    "trainer.max_length=32",
    "trainer.learning_rate=5e-3",
    "trainer.batch_size=16",
    "cluster.cpus_per_trial=1",
    # Seed re-runs off unless a test is about them.
    "promote.top_k=1",
    "promote.seeds=[]",
    # ... and so is the refit on all training rows (tests/search/test_refit.py turns it on).
    "promote.refit=false",
]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MEDSWEEP_CACHE", str(ROOT / ".cache" / "medsweep"))
# Tests never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def compose_config(overrides=(), run_dir: Path | str | None = None) -> dict:
    """The config dict the CLI would build for these overrides (minus Hydra's own node). Without a
    run_dir, a fresh temporary one: a test that trains must never write its token cache or Optuna
    journal into the checkout (they were once committed from there)."""
    from medsweep.run import compose

    return compose(overrides, run_dir if run_dir is not None else tempfile.mkdtemp(prefix="medsweep-test-"))


@pytest.fixture
def tiny_config(tmp_path) -> dict:
    return compose_config(TINY, run_dir=tmp_path)


def tiny_checkpoints(base: Path, overrides=(), run_dir: Path | None = None) -> list[tuple[Path, dict]]:
    """Train one tiny trial (TINY + `overrides`) and copy out the checkpoint of each evaluation:
    [(checkpoint folder, the evaluation's report)], oldest first. Real training, real checkpoints."""
    import shutil

    from medsweep.training.trial import run_trial

    kept = []

    def keep(report, checkpoint_dir):
        target = Path(base) / f"ckpt{len(kept)}"
        shutil.copytree(checkpoint_dir, target)
        kept.append((target, dict(report)))

    run_trial(compose_config(TINY + list(overrides), run_dir=run_dir or base), on_evaluation=keep)
    return kept


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m medsweep.run ARGS` in a subprocess, as a user would type it."""
    full_env = dict(os.environ, **(env or {}))
    # An in-process ray.init in an earlier test exports RAY_ADDRESS; a user's shell would not have it.
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "medsweep.run", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def wandb_env(base: Path) -> dict:
    """Keep every file wandb writes (settings, caches, artifact staging) under `base`."""
    return {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(base / "config"), "WANDB_CACHE_DIR": str(base / "cache"),
            "WANDB_DATA_DIR": str(base / "data"), "WANDB_DIR": str(base / "dir")}


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One real `+sweep=smoke tracker=wandb` run (W&B offline, no API key), shared by the sweep,
    promotion and tracking tests: (run dir, wandb base folder, finished process)."""
    base = tmp_path_factory.mktemp("smoke")
    run_dir = base / "run"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WANDB_API_KEY", raising=False)  # no key: offline must not need one
        proc = run_cli("+sweep=smoke", "tracker=wandb", f"hydra.run.dir={run_dir}", env=wandb_env(base), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, base, proc


def kill_driver_after_first_trial(args: list[str], run_dir: Path, env: dict | None = None, timeout: int = 300,
                                  rows: int = 1) -> list[dict]:
    """Start the driver command `args` and kill -9 it and everything it started, as a crashed
    machine would, once its leaderboard has `rows` finished trials; returns those rows."""
    import csv
    import signal
    import time

    import psutil

    def finished() -> list:
        path = run_dir / "leaderboard.csv"
        return list(csv.DictReader(open(path))) if path.exists() else []

    driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    processes = []
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and len(finished()) < rows:
            processes = psutil.Process(driver.pid).children(recursive=True) or processes
            time.sleep(0.3)
        assert len(finished()) >= rows, f"fewer than {rows} trial(s) finished before the deadline"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        driver.wait(timeout=30)
    return finished()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """A real uvicorn on 127.0.0.1 in a thread of this process; yields the base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "server did not come up"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
