"""The sweep's Optuna study (read live from other processes and a dashboard), warm starts and time
budgets. Real Ray Tune sweeps on the tiny random BERT; the dashboard is a real server on 127.0.0.1."""

import csv
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from medsweep.config import ConfigError
from medsweep.search import budget, study, sweep
from medsweep.rundir import RunDir
from medsweep.search.space import SearchSpace
from tests.conftest import ROOT, compose_config, kill_driver_after_first_trial, run_cli

STATE_OF = {"completed": "COMPLETE", "early_stopped": "PRUNED", "budget_stopped": "PRUNED"}


def leaderboard(run_dir: Path) -> list[dict]:
    with open(run_dir / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def trials_from_another_process(storage: str, name: str) -> list[dict]:
    """optuna.load_study in a fresh interpreter, as a dashboard or a second driver would."""
    code = (
        "import json, sys, optuna\n"
        "from medsweep.search.study import open_storage\n"
        "s = optuna.load_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1]))\n"
        "print(json.dumps([{'number': t.number, 'state': t.state.name, 'value': t.value, 'params': t.params,\n"
        "  'steps': sorted(t.intermediate_values), 'attrs': t.user_attrs} for t in s.trials]))\n")
    proc = subprocess.run([sys.executable, "-c", code, storage, name], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def smoke_overrides(run_dir: Path, *extra: str) -> dict:
    """The smoke sweep's data and space (so its splits match the shared smoke run's), trials shortened."""
    return compose_config(["+sweep=smoke", "trainer.epochs=1", "trainer.eval_every_steps=10", "trainer.max_length=32",
                           "cluster.num_cpus=2", *extra], run_dir=run_dir)


def test_the_study_is_read_from_another_process_with_every_trial_and_value(smoke_sweep):
    run_dir, _, _ = smoke_sweep
    recorded = json.loads((run_dir / study.STUDY_FILE).read_text())
    assert recorded["storage"] == str(run_dir / study.JOURNAL_FILE) and recorded["study_name"] == "smoke"
    trials = {t["attrs"]["ray_trial_id"]: t for t in trials_from_another_process(recorded["storage"], "smoke")}
    rows = leaderboard(run_dir)
    assert set(trials) == {r["trial_id"] for r in rows} and len(trials) == 2
    for row in rows:
        trial = trials[row["trial_id"]]
        assert trial["state"] == STATE_OF[row["status"]] and trial["attrs"]["medsweep_status"] == row["status"]
        assert trial["params"]["trainer/learning_rate"] == pytest.approx(float(row["trainer.learning_rate"]))
        # One intermediate value per evaluation, and the trial's value is its best (the step it keeps).
        assert trial["steps"] == list(range(1, int(row["evaluations"]) + 1))
        assert trial["value"] == pytest.approx(float(row["best_value"]))


def test_optuna_dashboard_lists_the_study_over_http(smoke_sweep):
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    run_dir, _, _ = smoke_sweep
    server = make_server("127.0.0.1", 0, wsgi(str(run_dir / study.JOURNAL_FILE)), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("smoke", ["maximize"])]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{studies[0]['study_id']}", timeout=30))
    finally:
        server.shutdown()
        server.server_close()
    # The dashboard names the objective by the metric, not "Objective 0".
    assert detail["objective_names"] == ["val_f1_macro"]
    rows = {r["trial_id"]: r for r in leaderboard(run_dir)}
    shown = {next(a["value"] for a in t["user_attrs"] if a["key"] == "ray_trial_id"): t for t in detail["trials"]}
    assert set(shown) == set(rows)
    for trial_id, trial in shown.items():
        assert trial["state"] == STATE_OF[rows[trial_id]["status"]].capitalize()
        assert len(trial["intermediate_values"]) == int(rows[trial_id]["evaluations"])
        assert {p["name"] for p in trial["params"]} == {"trainer/learning_rate", "trainer/warmup_ratio"}


def test_an_early_stopped_trial_is_pruned_and_a_resumed_report_is_ignored(tmp_path):
    import optuna

    config = compose_config(["+sweep=smoke", "sweep.num_trials=3"], run_dir=tmp_path)
    space = SearchSpace(config["sweep"]["search_space"]).ray(config)
    searcher = sweep.build_searcher(config, space)
    searcher.set_search_properties("val_f1_macro", "max", space)
    for tid in ("a", "b"):
        searcher.suggest(tid)
    for step, value in enumerate([0.3, 0.5, 0.4], 1):
        searcher.on_trial_result("a", {"val_f1_macro": value, "training_iteration": step, "final": False})
    searcher.on_trial_complete("a", {"val_f1_macro": 0.45, "training_iteration": 4, "final": True})
    searcher.on_trial_result("b", {"val_f1_macro": 0.2, "training_iteration": 1, "final": False})
    searcher.on_trial_complete("b", {"val_f1_macro": 0.2, "training_iteration": 1, "final": False})
    # A resumed trial replays a result after the study finished it: ignored, not an exception.
    searcher.on_trial_result("a", {"val_f1_macro": 0.9, "training_iteration": 5, "final": False})
    loaded = optuna.load_study(study_name="smoke", storage=study.open_storage(str(tmp_path / study.JOURNAL_FILE)))
    a, b = sorted(loaded.trials, key=lambda t: t.user_attrs["ray_trial_id"])
    assert (a.state.name, a.value, dict(a.intermediate_values)) == ("COMPLETE", 0.5, {1: 0.3, 2: 0.5, 3: 0.4, 4: 0.45})
    assert (b.state.name, b.value, b.user_attrs["medsweep_status"]) == ("PRUNED", 0.2, "early_stopped")


def test_the_searcher_survives_ray_s_save_and_restore(tmp_path):
    # A resumed sweep unpickles the searcher the Tuner was given (tuner.pkl), then restores into it
    # the state Ray saved as the sweep ran (OptunaSearch.save: its __dict__, plain pickle).
    import pickle

    import optuna

    config = compose_config(["+sweep=smoke", "sweep.num_trials=3"], run_dir=tmp_path)
    space = SearchSpace(config["sweep"]["search_space"]).ray(config)
    searcher = sweep.build_searcher(config, space)
    as_given = pickle.dumps(searcher)
    searcher.set_search_properties("val_f1_macro", "max", space)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_f1_macro": 0.3, "training_iteration": 1, "final": False})
    searcher.save(str(tmp_path / "searcher-state.pkl"))

    restored = pickle.loads(as_given)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    assert isinstance(restored, study.SweepSearch) and restored._experiment == RunDir.of(config).experiment()
    restored.on_trial_complete("a", {"val_f1_macro": 0.5, "training_iteration": 2, "final": True})
    restored.suggest("b")
    loaded = optuna.load_study(study_name="smoke", storage=study.open_storage(str(tmp_path / study.JOURNAL_FILE)))
    a, b = sorted(loaded.trials, key=lambda t: t.user_attrs["ray_trial_id"])
    assert (a.state.name, a.value, dict(a.intermediate_values)) == ("COMPLETE", 0.5, {1: 0.3, 2: 0.5})
    assert b.state.name == "RUNNING" and b.user_attrs[study.EXPERIMENT] == RunDir.of(config).experiment()


def test_an_rdb_study_that_optimises_the_other_way_is_refused_before_ray(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="shared", storage=url, direction="minimize")
    config = compose_config(["+sweep=smoke", f"sweep.storage={url}", "sweep.study_name=shared"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"study 'shared' .* optimises \['minimize'\], this sweep \['maximize'\]"):
        sweep.preflight(config)
    config["sweep"]["storage"] = "redis://localhost/0"
    with pytest.raises(ConfigError, match="must be a file path or a sqlite://"):
        sweep.preflight(config)


@pytest.mark.parametrize("overrides, message", [
    (["data.max_train_samples=400"], r"used a different train split \(fingerprint"),
    (["sweep.metric=val_accuracy"], r"optimised sweep.metric='val_f1_macro', this sweep 'val_accuracy'"),
    (["sweep.mode=min"], r"optimised sweep.mode='max', this sweep 'min'"),
    (["+sweep.search_space.trainer.weight_decay={type: uniform, lower: 0.0, upper: 0.1}"],
     r"did not search trainer.weight_decay, which this sweep does"),
    (["sweep.search_space.trainer.learning_rate.upper=6e-4"], r"tried trainer.learning_rate=.*outside this sweep's search space"),
])
def test_a_warm_start_from_an_incomparable_run_is_refused(smoke_sweep, tmp_path, overrides, message):
    run_dir, _, _ = smoke_sweep
    config = smoke_overrides(tmp_path, f"sweep.warm_start=[{run_dir}]", *overrides)
    with pytest.raises(ConfigError, match=message):
        sweep.preflight(config)


def test_the_cli_refuses_an_incomparable_warm_start_with_one_line_and_exit_2(smoke_sweep, tmp_path):
    run_dir, _, _ = smoke_sweep
    before = (run_dir / study.JOURNAL_FILE).read_bytes()
    proc = run_cli("+sweep=smoke", f"sweep.warm_start=[{run_dir}]", "sweep.metric=val_accuracy", f"hydra.run.dir={tmp_path / 'new'}",
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith("medsweep: error: sweep.warm_start:") and "val_accuracy" in proc.stderr
    assert not (tmp_path / "new" / "ray").exists() and not (tmp_path / "new" / ".hydra").exists()
    assert (run_dir / study.JOURNAL_FILE).read_bytes() == before  # the earlier study is untouched


def test_a_warm_started_sweep_under_a_tiny_budget_ends_with_a_promoted_model(smoke_sweep, tmp_path):
    # One real sweep for both features (each real sweep costs the default suite ~30 s):
    # warm-started from the shared smoke run, and given a budget that stops it mid-search.
    import optuna
    import ray

    from medsweep.run import execute

    earlier, _, _ = smoke_sweep
    earlier_rows = {r["trial_id"]: r for r in leaderboard(earlier)}
    config = smoke_overrides(tmp_path, f"sweep.warm_start=[{earlier}]", "sweep.num_trials=60", "sweep.max_concurrent=2",
                             "sweep.time_budget_s=40")  # 60 smoke trials take minutes (~3.5 s each): the budget must end it
    try:
        report = execute(config)
    finally:
        ray.shutdown()
    assert report["test"]["test_accuracy"] > 0 and (tmp_path / "promoted" / "metrics.json").exists()

    # The budget ended the search: the trials it stopped are marked, and it kept the promotion's reserve.
    spent = budget.read(tmp_path)
    assert spent["stopped"] and spent["reserve_s"] == pytest.approx(budget.PROMOTION_S)  # no seed re-runs here
    # It stops once the time used and the reserve reach the budget, but never before a first evaluation.
    assert spent["used_s"] <= max(spent["limit_s"] - spent["reserve_s"], spent["first_result_s"]) + 5
    rows = leaderboard(tmp_path)
    assert len(rows) < 60

    # The earlier sweep's trials came first in the new study, with their best values; every new
    # trial is settled (none left RUNNING), and the budget-stopped ones are PRUNED.
    trials = optuna.load_study(study_name="smoke", storage=study.open_storage(str(tmp_path / study.JOURNAL_FILE))).trials
    warm = [t for t in trials if t.user_attrs.get(study.WARM_FROM)]
    assert [t.number for t in warm] == [0, 1] and {t.user_attrs["ray_trial_id"] for t in warm} == set(earlier_rows), \
        [(t.number, t.state.name, t.user_attrs) for t in trials[:4]]
    for t in warm:
        assert t.state.name == "COMPLETE" and t.value == pytest.approx(float(earlier_rows[t.user_attrs["ray_trial_id"]]["best_value"]))
    new = {t.user_attrs["ray_trial_id"]: t for t in trials if not t.user_attrs.get(study.WARM_FROM)}
    assert all(t.state.is_finished() for t in new.values())
    # The budget stopped trials in flight: mid-training ones (PRUNED, with a leaderboard row) or, when
    # trials are fast and the stop lands between them, ones that had not evaluated yet (FAIL, no row).
    in_flight = {tid: t.user_attrs["medsweep_status"] for tid, t in new.items()
                 if t.user_attrs["medsweep_status"] in ("budget_stopped", "not_started")}
    assert in_flight, {tid: t.user_attrs for tid, t in new.items()}
    assert {r["trial_id"] for r in rows if r["status"] == "budget_stopped"} == \
        {tid for tid, status in in_flight.items() if status == "budget_stopped"}
    assert all(new[tid].state.name == "FAIL" for tid, status in in_flight.items() if status == "not_started")
    for row in rows:
        assert new[row["trial_id"]].user_attrs["medsweep_status"] == row["status"]
        assert new[row["trial_id"]].state.name == STATE_OF[row["status"]]


@pytest.mark.slow  # two sweeps and a kill -9: a few minutes on 2 cores (`make test-slow`)
@pytest.mark.faults
def test_a_killed_and_resumed_sweep_keeps_one_study_and_counts_its_budget_across(tmp_path):
    import os
    import time

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "medsweep.run", "+sweep=smoke", "sweep.num_trials=3", "sweep.max_concurrent=1",
            "data.max_train_samples=96", "data.max_eval_samples=60", "trainer.max_length=32", "sweep.time_budget_s=3000",
            f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    kill_driver_after_first_trial(args, run_dir, env=env)
    used_before = budget.read(run_dir)["used_s"]
    time.sleep(5)  # the driver is down: not search time

    started = time.time()
    proc = subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    wall = time.time() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming the sweep" in proc.stdout
    used_after = budget.read(run_dir)["used_s"]
    assert used_before > 0 and used_before < used_after < used_before + wall

    rows = leaderboard(run_dir)
    assert len(rows) == 3
    trials = trials_from_another_process(str(run_dir / study.JOURNAL_FILE), "smoke")
    ran = [t for t in trials if t["attrs"].get("medsweep_status") != "orphaned"]
    ids = [t["attrs"]["ray_trial_id"] for t in ran]
    assert sorted(ids) == sorted(r["trial_id"] for r in rows)  # each trial once, none lost
    by_id = {t["attrs"]["ray_trial_id"]: t for t in ran}
    for row in rows:
        assert by_id[row["trial_id"]]["state"] == STATE_OF[row["status"]]
        assert by_id[row["trial_id"]]["value"] == pytest.approx(float(row["best_value"]))
    assert all(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
