"""tracker=mlflow: one real tiny sweep into the default local store (SQLite under the run dir, no
server), read back with MlflowClient; a canary phrase in every text of the data must appear nowhere
in the store."""

from __future__ import annotations

import importlib.resources
import socket

import pandas as pd
import pytest

from tests.conftest import TINY, run_cli

pytest.importorskip("mlflow")
# A real CLI sweep (~40 s on an idle 2-core machine, 2+ min under load) plus MLflow creating its database.
# The MLflow sweep (a real run into a file store) is slow; CI runs it in its fault stage.
def slow(test):
    return pytest.mark.slow(pytest.mark.faults(test))


CANARY = "zebra-quartz canary phrase 7731"


@pytest.fixture(scope="module")
def mlflow_sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow")
    source = importlib.resources.files("medsweep.resources") / "medical_abstracts.csv.gz"
    rows = pd.read_csv(source).head(200)
    frame = pd.DataFrame({"text": rows["medical_abstract"].str.slice(0, 300) + " " + CANARY,
                          "label": rows["condition_label"]})
    frame.to_csv(base / "notes.csv", index=False)
    run_dir = base / "run"
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data=csv", f"data.path={base / 'notes.csv'}", "data.max_eval_samples=40", "trainer.epochs=2",
        "sweep.num_trials=2", "sweep.max_concurrent=2", "sweep.name=mlflowtest",
        "+sweep.search_space.trainer.learning_rate={type:loguniform,lower:1e-3,upper:5e-3}"]
    proc = run_cli(*overrides, "tracker=mlflow", f"hydra.run.dir={run_dir}", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    uri = f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"
    return run_dir, proc, MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_of(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "medsweep"]
    return client.search_runs([experiment.experiment_id])


@slow
def test_one_parent_run_and_a_nested_run_per_trial_with_every_evaluation(mlflow_sweep):
    run_dir, _, client = mlflow_sweep
    runs = runs_of(client)
    parents = [r for r in runs if r.data.tags.get("medsweep.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("medsweep.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.name"] == "mlflowtest" and parent.data.params["data.name"] == "csv"
    leaderboard = pd.read_csv(run_dir / "leaderboard.csv", dtype={"trial_id": str})
    assert {r.data.tags["medsweep.trial_id"] for r in trials} == set(leaderboard["trial_id"])
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["medsweep.status"] in ("completed", "early_stopped")
        row = leaderboard[leaderboard["trial_id"] == run.data.tags["medsweep.trial_id"]].iloc[0]
        assert float(run.data.params["trainer.learning_rate"]) == pytest.approx(row["trainer.learning_rate"])
        history = client.get_metric_history(run.info.run_id, "val_f1_macro")
        assert len(history) == row["evaluations"] >= 1
        assert len({m.step for m in history}) == len(history) and max(m.step for m in history) > 0
        assert run.data.metrics["best_val_f1_macro"] == pytest.approx(row["best_value"])
        assert max(m.value for m in history) == pytest.approx(row["best_value"])


@slow
def test_promoted_model_and_report_plots_are_artifacts_and_champion_is_registered(mlflow_sweep):
    run_dir, proc, client = mlflow_sweep
    (parent,) = [r for r in runs_of(client) if r.data.tags.get("medsweep.kind") == "sweep"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"promoted", "report", "leaderboard.csv"} <= artifacts
    promoted = {a.path.split("/", 1)[1] for a in client.list_artifacts(parent.info.run_id, "promoted")}
    assert {"config.json", "model.safetensors", "metrics.json", "README.md"} <= promoted
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/confusion_matrix.png" in plots and "report/learning_curves.png" in plots
    version = client.get_model_version_by_alias("medsweep-mlflowtest", "champion")
    assert version.run_id == parent.info.run_id and version.source.endswith("/promoted")
    import json

    test = json.loads((run_dir / "promoted" / "metrics.json").read_text())["test"]
    assert parent.data.metrics["test_f1_macro"] == pytest.approx(test["test_f1_macro"])
    assert "MLflow: sweep run" in proc.stdout


@slow
def test_no_text_from_the_data_reaches_the_mlflow_store(mlflow_sweep):
    run_dir, _, _ = mlflow_sweep
    files = [p for p in (run_dir / "mlflow").rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and len(files) > 10
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), path


def test_an_unreachable_tracking_server_is_one_config_error_before_any_trial(tmp_path):
    from medsweep.config import ConfigError
    from medsweep.reporting import tracking
    from tests.conftest import compose_config

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = compose_config(["tracker=mlflow", f"tracker.tracking_uri=http://127.0.0.1:{port}"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"tracker.tracking_uri='http://127.0.0.1:{port}' cannot be used"):
        tracking.check(config)
    assert not (tmp_path / "mlflow").exists()


@slow
def test_log_examples_true_is_what_puts_text_in_the_store(mlflow_sweep, tmp_path):
    # The canary check above can fail: with log_examples the same sweep's record carries the texts.
    import yaml

    from medsweep.reporting import tracking

    run_dir, _, _ = mlflow_sweep
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config.update(run_dir=str(run_dir))
    config["tracker"].update(log_examples=True, dir=str(tmp_path))
    tracking.log_sweep(config, run_dir, None)
    store = [p for p in (tmp_path / "mlflow").rglob("validation_examples.json")]
    assert len(store) == 1 and CANARY in store[0].read_text()
