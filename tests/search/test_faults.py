"""Failures: a diverging trial, a crashed trial retried from its checkpoint, an out-of-memory
retry, a killed driver resumed by the same command. Real Ray, real training, loopback only."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from medsweep.search import sweep
from medsweep.training.trial import run_trial, training_arguments
from tests.conftest import ROOT, TINY, compose_config, kill_driver_after_first_trial


@pytest.fixture
def ray_cleanup():
    yield
    ray.shutdown()


def leaderboard(run_dir: Path) -> list[dict]:
    with open(run_dir / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def test_a_diverging_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, ray_cleanup):
    from medsweep.run import execute

    config = compose_config(["+sweep=smoke", "data.max_train_samples=96", "data.max_eval_samples=60",
                             "trainer.epochs=2", "trainer.max_length=32", "cluster.num_cpus=2"], run_dir=tmp_path)
    config["sweep"]["search_space"] = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e12}}}
    # The first point makes the loss blow up to NaN; the second is sane.
    config["sweep"]["points_to_evaluate"] = [{"trainer": {"learning_rate": 1e11}}, {"trainer": {"learning_rate": 2e-3}}]
    report = execute(config)
    rows = {float(r["trainer.learning_rate"]): r for r in leaderboard(tmp_path)}
    assert set(rows) == {1e11, 2e-3}
    assert rows[1e11]["status"] == "error" and "diverged" in rows[1e11]["error"]
    assert rows[2e-3]["status"] == "completed"
    assert json.loads((tmp_path / "promoted" / "trial.json").read_text())["config"]["trainer"]["learning_rate"] == 2e-3
    assert report["test"]["test_accuracy"] > 0


def test_points_to_evaluate_must_set_every_dimension():
    config = compose_config(["+sweep=smoke"])
    config["sweep"]["points_to_evaluate"] = [{"trainer": {"learning_rate": 1e-3}}]
    with pytest.raises(sweep.ConfigError, match=r"missing \['trainer.warmup_ratio'\]"):
        sweep.preflight(config)


@pytest.mark.slow  # a real Ray sweep of ~20-40 s; keeps the default suite under 10 min (`make test-slow`)
@pytest.mark.faults
def test_a_crashed_trial_is_retried_from_its_last_checkpoint(tmp_path, ray_cleanup):
    config = compose_config(TINY + ["trainer.epochs=3", "cluster.num_cpus=1", "sweep.max_failures=1"], run_dir=tmp_path)
    plan = sweep.preflight(config)
    marker = tmp_path / "crashed-once"

    def flaky_trial(sampled, base_config):
        # Crash the first attempt right after its 2nd checkpoint reached Ray, as a lost node would.
        import medsweep.training.trial as trial_module
        from medsweep.search.sweep import tune_trial

        original = trial_module.EvaluationReporter.on_save

        def on_save(self, args, state, control, **kwargs):
            original(self, args, state, control, **kwargs)
            if self.next_evaluation == 3 and not marker.exists():
                marker.touch()
                raise RuntimeError("simulated node failure")

        trial_module.EvaluationReporter.on_save = on_save
        tune_trial(sampled, base_config)

    results = sweep.run_sweep(plan, trainable_fn=flaky_trial)
    assert marker.exists() and results[0].error is None
    history = results[0].metrics_dataframe
    # Resumed at evaluation 3, not restarted from 1: the retry continued the schedule.
    assert history["evaluation"].tolist() == [1, 2, 3]
    assert history["step"].is_monotonic_increasing and history["step"].tolist()[-1] == 18
    assert leaderboard(tmp_path)[0]["status"] == "completed"


def test_out_of_memory_halves_the_batch_and_doubles_accumulation(tiny_config, monkeypatch):
    from transformers import Trainer

    original = Trainer.training_step
    seen = []

    def training_step(self, *args, **kwargs):
        seen.append((self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps))
        if self.args.per_device_train_batch_size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)
    tiny_config["trainer"].update(batch_size=16, gradient_accumulation_steps=1)
    result = run_trial(tiny_config)
    assert (result["batch_size"], result["gradient_accumulation_steps"]) == (4, 4)
    assert seen[0] == (16, 1) and (8, 2) in seen and seen[-1] == (4, 4)
    # Same effective batch, so the same number of optimizer steps as planned: 96 rows / 16 x 2 epochs.
    assert result["history"][-1]["step"] == 12 and result["history"][-1]["batch_size"] == 4


def test_dtype_is_chosen_by_device_and_recorded(tiny_config):
    from medsweep.training.precision import resolve_dtype

    # The GPU branches, checked on a CPU: bf16 only where the GPU supports it natively.
    assert resolve_dtype("auto", cuda=True, bf16_supported=True) == torch.bfloat16
    assert resolve_dtype("auto", cuda=True, bf16_supported=False) == torch.float32
    assert resolve_dtype("auto", cuda=False, bf16_supported=False) == torch.float32
    assert resolve_dtype("float16", cuda=True, bf16_supported=False) == torch.float16
    args = training_arguments(tiny_config["trainer"], "/tmp/unused", torch.bfloat16, save=True)
    assert args.bf16 and not args.fp16 and args.save_strategy == "epoch"
    tiny_config["trainer"]["epochs"] = 1
    assert run_trial(tiny_config)["history"][0]["dtype"] == "float32"


@pytest.mark.slow  # a minute or more on 2 cores: `make test-slow`
@pytest.mark.faults
def test_killed_driver_resumes_with_the_same_command(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "medsweep.run", "+sweep=smoke", "sweep.num_trials=3", "sweep.max_concurrent=1",
            "data.max_train_samples=96", "data.max_eval_samples=60", "trainer.max_length=32", f"hydra.run.dir={run_dir}"]
    kill_driver_after_first_trial(args, run_dir, timeout=180)  # kill -9, as a crashed machine would

    finished = {r["trial_id"]: r for r in leaderboard(run_dir)}
    result_files = {p.parent.name: p.read_text() for p in (run_dir / "ray" / "sweep").glob("*/result.json")}
    assert not (run_dir / "promoted").exists()

    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming the sweep" in proc.stdout and f"{len(finished)} trial(s) already finished" in proc.stdout
    rows = leaderboard(run_dir)
    assert len(rows) == 3 and {r["trial_id"] for r in rows} >= set(finished)
    assert all(r["status"] == "completed" for r in rows)
    # Trials that had finished were not run again: their result files are untouched.
    for name, text in result_files.items():
        trial_id = name.split("_")[2]
        if trial_id in finished:
            assert (run_dir / "ray" / "sweep" / name / "result.json").read_text() == text
    assert len(list((run_dir / "ray" / "sweep").glob("*/result.json"))) == 3
    assert (run_dir / "promoted" / "metrics.json").exists()


def _tree_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # one real Ray trial
@pytest.mark.faults
def test_disk_full_while_saving_a_checkpoint_fails_the_trial_and_keeps_the_promoted_model(tmp_path, ray_cleanup):
    """ENOSPC injected in the trial process at its second checkpoint save: the trial fails with the
    reason on the leaderboard, and the run dir's promoted model (from an earlier run) is untouched."""
    import shutil

    from medsweep.promotion.release import promote_checkpoint
    from medsweep.serving.inference import load_promoted

    run_dir, kept = tmp_path / "run", tmp_path / "kept"

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    run_trial(compose_config(TINY, run_dir=tmp_path), on_evaluation=keep_last)
    promote_checkpoint(kept, run_dir)  # the earlier model, v001
    before = _tree_digest(run_dir / "promoted-versions")
    config = compose_config(TINY + ["trainer.epochs=3", "cluster.num_cpus=1", "sweep.max_failures=0"], run_dir=run_dir)
    plan = sweep.preflight(config)

    def disk_full_trial(sampled, base_config):
        import errno

        from transformers import Trainer

        from medsweep.search.sweep import tune_trial

        original, saves = Trainer._save_checkpoint, []

        def save(self, *args, **kwargs):
            saves.append(1)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return original(self, *args, **kwargs)

        Trainer._save_checkpoint = save
        tune_trial(sampled, base_config)

    results = sweep.run_sweep(plan, trainable_fn=disk_full_trial)
    assert results[0].error is not None
    row = leaderboard(run_dir)[0]
    assert row["status"] == "error" and "No space left on device" in row["error"]
    assert _tree_digest(run_dir / "promoted-versions") == before
    assert load_promoted(run_dir / "promoted").predict(["Acute myocardial infarction."]).shape[0] == 1


def driver_lines(err: str) -> str:
    """The driver's own stderr: without the lines Ray forwards from its worker processes, prefixed
    "(<task or actor> pid=N)". A worker that a signal stops inside a weakref callback prints Python's
    "Exception ignored ... Traceback ... SystemExit" there (Ray's shutdown, seen once in CI's fault stage):
    not the driver's traceback, which is what the assertions below look for."""
    return "\n".join(line for line in err.splitlines() if not re.search(r"\(\w+ pid=\d+(, ip=[\d.]+)?\)", line))


def signal_driver(args: list[str], tmp_path: Path, ready, signum, before_signal=lambda driver: None,
                  deadline_s: float = 240) -> tuple[int, str]:
    """Start `python -m medsweep.run ARGS`, wait until `ready()`, call `before_signal(driver)`, send
    `signum`; returns (exit code, stderr). Whatever is left is killed, as a test must not leak a driver."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-m", "medsweep.run", *args], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.time() + deadline_s
            while time.time() < deadline and not ready():
                assert driver.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
                time.sleep(0.3)
            assert ready(), "the driver never got there before the deadline"
            before_signal(driver)
            driver.send_signal(signum)
            code = driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
    return code, (tmp_path / "stderr.txt").read_text()


@pytest.mark.slow  # two real sweeps in subprocesses
@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_sweep_cleanly_and_the_same_command_resumes(tmp_path, signum):
    """SIGTERM or Ctrl-C (SIGINT) to a running driver: it stops the trials, saves the experiment, says
    how far it got, promotes nothing and exits 143/130. Meanwhile a second driver on the same run dir
    refuses naming it. The same command then resumes and finishes the sweep."""
    from tests.conftest import run_cli

    run_dir = tmp_path / "run"
    # Six trials: the signal (sent once the first has finished and a second driver was refused) must
    # land in the search even on a loaded machine; the other phases have tests of their own.
    args = ["+sweep=smoke", "sweep.num_trials=6", "sweep.max_concurrent=1", "sweep.scheduler=fifo", "data.max_train_samples=96",
            "data.max_eval_samples=60", "trainer.max_length=32", f"hydra.run.dir={run_dir}"]
    def refused_while_running(driver):
        second = run_cli(*args, timeout=120)
        assert second.returncode == 2 and f"pid {driver.pid} on" in second.stderr, second.stderr[-2000:]

    code, err = signal_driver(args, tmp_path, lambda: (run_dir / "leaderboard.csv").exists() and leaderboard(run_dir),
                              signum, refused_while_running)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err[-3000:]
    assert "sweep interrupted" in err and "run the same command to resume" in err and "Traceback" not in driver_lines(err)
    assert not (run_dir / "promoted").exists()
    finished = {r["trial_id"] for r in leaderboard(run_dir)}

    resumed = run_cli(*args, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout
    rows = leaderboard(run_dir)
    assert len(rows) == 6 and {r["trial_id"] for r in rows} >= finished
    assert all(r["status"] == "completed" for r in rows)
    assert (run_dir / "promoted" / "metrics.json").exists()


@pytest.mark.slow  # a sweep, seed re-runs and a resume in subprocesses: a few minutes on 2 cores
@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_seed_reruns_stops_cleanly_and_the_same_command_resumes_them(tmp_path, signum):
    """The signal lands once a seed re-run has finished: the driver stops the re-runs, promotes
    nothing and says how to resume; the same command keeps the finished sweep and re-runs, trains
    only what is missing, and promotes."""
    from tests.conftest import run_cli

    run_dir = tmp_path / "run"
    args = ["+sweep=smoke", "sweep.num_trials=2", "sweep.max_concurrent=1", "sweep.scheduler=fifo",
            "promote.top_k=2", "promote.seeds=[1,2]", "data.max_train_samples=96", "data.max_eval_samples=60",
            "trainer.max_length=32", f"hydra.run.dir={run_dir}"]
    seeds_dir = run_dir / "ray" / "seeds"

    def finished_reruns() -> dict[str, str]:
        # A re-run's result.json is complete once its last evaluation (final) is in it.
        done = {}
        for path in seeds_dir.glob("*/result.json"):
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if lines and lines[-1].get("final"):
                done[path.parent.name] = path.read_text()
        return done

    def a_rerun_ended() -> bool:
        # Its last checkpoint (evaluation 3 of smoke's 3 epochs), which the trial writes itself: Ray's
        # result.json reaches the run dir at Ray's next state save, which can come after these short
        # re-runs have all ended.
        return any(seeds_dir.glob("*/checkpoint_000002"))

    code, err = signal_driver(args, tmp_path, a_rerun_ended, signum, deadline_s=400)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err[-3000:]
    assert "interrupted" in err and "run the same command to resume" in err and "Traceback" not in driver_lines(err)
    assert not (run_dir / "promoted").exists()
    done = finished_reruns()
    # At least one re-run had ended when the signal landed (there are four in all); the later ones
    # take ~1 s each here, so all four may have ended before Tune heard the signal (it still calls
    # them unfinished): either way the resume below must keep each finished one as it is.
    assert done

    resumed = run_cli(*args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout and "resuming the seed re-runs" in resumed.stdout
    assert len(list(seeds_dir.glob("*/result.json"))) == 4  # 2 configurations x 2 extra seeds, no more
    for name, text in done.items():  # a re-run that had finished was not trained again
        assert (seeds_dir / name / "result.json").read_text() == text
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    assert metrics["seed_robustness"]["n"] == 3 and sorted(metrics["seed_robustness"]["seeds"]) == [1, 2, 42]


@pytest.fixture
def three_trained_runs(tmp_path_factory):
    """Three real checkpoints of one tiny configuration (its evaluations 1, 2, 3) and a plan."""
    from medsweep.search.sweep import preflight
    from tests.conftest import tiny_checkpoints

    base = tmp_path_factory.mktemp("fallback")
    kept = tiny_checkpoints(base, ["trainer.epochs=3"], run_dir=base / "run")
    return preflight(compose_config(TINY + ["trainer.epochs=3"], run_dir=base / "run")), kept


def selection_of(plan, kept: list, scores: list[float]):
    """A Selection over the kept checkpoints as two configurations: the first wins with two runs."""
    from ray.tune import Checkpoint

    from medsweep.promotion.ranking import Candidate, Run
    from medsweep.promotion.selection import Selection

    runs = [Run(seed=seed, scores=dict(report, val_f1_macro=score), checkpoint=Checkpoint.from_directory(str(path)),
                path=str(path), origin="sweep") for (path, report), score, seed in zip(kept, scores, (42, 1, 42))]
    winner = Candidate("winner", {"trainer": {"learning_rate": 1e-3}}, runs[:2])
    runner_up = Candidate("runner_up", {"trainer": {"learning_rate": 2e-3}}, runs[2:])
    searched, _ = plan.training_rows()
    return Selection(winner=winner, run=runs[0], ranked=[winner, runner_up], reranked=[winner, runner_up],
                     num_trials=2, training={"rows": searched["rows"], "train_fingerprint": searched["fingerprint"],
                                             "refit": False})


@pytest.mark.parametrize("damage", ["bit_flipped", "missing"])
def test_an_unreadable_checkpoint_at_promotion_falls_back_to_the_next_candidate(three_trained_runs, capsys, damage):
    """The chosen run's checkpoint is damaged or gone by promotion time: one line says so, and the
    next readable run (the winner's other run, then the next configuration) is promoted instead."""
    from medsweep.hf import DIGEST_FIELD
    from medsweep.promotion import stage

    plan, kept = three_trained_runs
    chosen = selection_of(plan, kept, [0.9, 0.8, 0.7])
    first = kept[0][0]
    if damage == "missing":
        shutil.rmtree(first)
    else:
        weights = next(first.glob("*.safetensors"))
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    report = stage.release_chosen(plan, chosen)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "cannot be promoted" in line]
    assert len(lines) == 1 and "trial winner (seed 42)" in lines[0] and "trying the next candidate" in lines[0]
    if damage == "bit_flipped":
        assert DIGEST_FIELD in lines[0] or "sha256" in lines[0] or "digest" in lines[0]
    # The winner's other run (seed 1, evaluation 2) went out, with its own record.
    assert report["checkpoint"] == str(kept[1][0]) and report["selection"]["promoted_seed"] == 1
    assert report["validation"]["evaluation"] == 2
    assert (plan.run_dir.promoted / "metrics.json").exists()


def test_when_no_checkpoint_can_be_read_nothing_is_promoted_and_the_run_says_so(three_trained_runs):
    from medsweep.promotion import stage
    from medsweep.promotion.ranking import NoUsableTrial

    plan, kept = three_trained_runs
    chosen = selection_of(plan, kept, [0.9, 0.8, 0.7])
    for path, _ in kept:
        shutil.rmtree(path)
    with pytest.raises(NoUsableTrial, match="no trial's checkpoint could be read"):
        stage.release_chosen(plan, chosen)
    assert not plan.run_dir.promoted.exists()
