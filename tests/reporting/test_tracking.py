"""tracker=wandb (offline, no API key) and the sweep report, read back from one real smoke sweep.

The W&B runs are checked in the files wandb wrote (the offline runs' .wandb record logs, decoded
with wandb's own protobuf schema, and their media files), not through a mock.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medsweep.config import ConfigError
from tests.conftest import ROOT, compose_config, wandb_env

REPORT_PLOTS = ("optimization_history", "param_importances", "parallel_coordinates", "learning_curves",
                "confusion_matrix", "roc_curves", "calibration", "risk_coverage")


def read_records(path: Path) -> list:
    """The records of a .wandb file: LevelDB log blocks (32 KiB, 7-byte chunk headers) after a
    7-byte ':W&B' header, each record a wandb_internal_pb2.Record. Read by hand because wandb 0.31
    has no Python reader left (its DataStore went with the move to the Go core)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32 * 1024
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: the record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            pending = b""
    return records


class OfflineRun:
    """What one offline run recorded: its run record, config, history rows, final summary, artifacts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config, self.history, self.summary, self.artifacts, self.exit = {}, [], {}, [], None
        for record in read_records(next(folder.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.job_type, self.group, self.name = record.run.job_type, record.run.run_group, record.run.display_name
                self.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "history":
                self.history.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                                     for item in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    self.summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
            elif kind == "exit":
                self.exit = record.exit.exit_code


def distinctive_sentences(config: dict) -> list[str]:
    """Long sentences from the abstracts this sweep trained and validated on."""
    from medsweep import data

    splits = data.load_splits(config["data"])
    texts = [splits.train["text"].iloc[0], splits.validation["text"].iloc[0], splits.test["text"].iloc[0]]
    return [max(text.split(". "), key=len) for text in texts]


@pytest.fixture(scope="module")
def wandb_sweep(smoke_sweep):
    run_dir, base, proc = smoke_sweep
    runs = [OfflineRun(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]
    return run_dir, base, proc, runs


def leaderboard_rows(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "leaderboard.csv") as f:
        return {row["trial_id"]: row for row in csv.DictReader(f)}


def test_one_offline_run_per_trial_with_config_history_and_best_summary(wandb_sweep):
    run_dir, _, proc, runs = wandb_sweep
    leaderboard = leaderboard_rows(run_dir)
    trials = [r for r in runs if r.job_type == "trial"]
    assert len(runs) == len(leaderboard) + 1 == 3  # two trials + the sweep run
    assert {r.group for r in runs} == {"smoke"}
    assert {r.config["trial_id"] for r in trials} == set(leaderboard)
    for run in trials:
        row = leaderboard[run.config["trial_id"]]
        assert run.exit == 0
        # The resolved config: the sampled learning rate written into the full trainer section.
        assert run.config["trainer"]["learning_rate"] == pytest.approx(float(row["trainer.learning_rate"]))
        assert run.config["model"]["name"] == "tiny_random" and run.config["trainer"]["epochs"] == 3
        evaluations = [h for h in run.history if "val_f1_macro" in h]
        assert len(evaluations) == int(row["evaluations"])
        assert {"val_f1_macro", "val_auroc", "val_accuracy", "val_loss", "epoch"} <= set(evaluations[0])
        assert [h["_step"] for h in evaluations] == sorted(h["_step"] for h in evaluations)  # optimizer steps
        assert run.summary["best_val_f1_macro"] == pytest.approx(float(row["best_value"]))
        assert run.summary["best_val_f1_macro"] == pytest.approx(max(h["val_f1_macro"] for h in evaluations))
        assert run.summary["best_step"] == int(row["best_step"]) and run.summary["status"] == row["status"]
    assert f"wandb sync {run_dir / 'wandb'}/offline-run-*" in proc.stdout
    # The driver's package list is recorded once, on the sweep run (it costs ~150 ms of driver CPU per run).
    assert [(r.folder / "files" / "requirements.txt").is_file() for r in runs] == [r.job_type == "sweep" for r in runs]


def test_sweep_run_logs_leaderboard_table_plots_and_best_model_artifact(wandb_sweep):
    run_dir, _, _, runs = wandb_sweep
    (sweep,) = [r for r in runs if r.job_type == "sweep"]
    assert sweep.exit == 0
    promoted = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    assert sweep.summary["test_f1_macro"] == pytest.approx(promoted["test"]["test_f1_macro"])
    assert sweep.summary["best_trial_id"] == promoted["trial_id"]

    (table_file,) = (sweep.folder / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 2 and "best_value" in table["columns"]
    assert table["data"][0][table["columns"].index("trial_id")] == promoted["trial_id"]  # best first

    logged_plots = {p.name.rsplit("_", 2)[0] for p in (sweep.folder / "files" / "media" / "images" / "report").glob("*.png")}
    assert logged_plots == set(REPORT_PLOTS)

    (model,) = [a for a in sweep.artifacts if a.type == "model"]
    assert "best" in model.aliases
    files = {entry.path for entry in model.manifest.contents}
    assert {"model.safetensors", "config.json", "metrics.json", "test_predictions.npz"} <= files
    assert json.loads(model.metadata)["test"] == promoted["test"]


def test_no_text_from_the_data_set_reaches_the_tracker(wandb_sweep):
    run_dir, base, _, _ = wandb_sweep
    sentences = distinctive_sentences(compose_config(["+sweep=smoke"]))
    assert all(len(s) > 60 for s in sentences)
    # Every file the tracker wrote, wherever wandb keeps it, and the report.
    files = [p for folder in (run_dir / "wandb", base / "data", base / "cache", base / "config", run_dir / "report")
             for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        for sentence in sentences:
            assert sentence.encode() not in content, f"{sentence[:40]!r}... found in {path}"


def test_log_examples_true_is_what_puts_text_in_the_tracker(wandb_sweep, tmp_path, monkeypatch):
    from medsweep.reporting import trackers, tracking

    run_dir, _, _, _ = wandb_sweep
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    config = compose_config(["+sweep=smoke", "tracker=wandb", "tracker.log_examples=true", f"tracker.dir={tmp_path}"],
                            run_dir=run_dir)
    tracking.log_sweep(config, run_dir, None)
    (table_file,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/validation_examples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["text", "label", "predicted", "confidence"]
    assert len(table["data"]) == trackers.EXAMPLES_LOGGED
    assert distinctive_sentences(config)[1] in table["data"][0][0]
    assert {row[1] for row in table["data"]} <= set(json.loads((run_dir / "promoted" / "metrics.json").read_text())["label_names"])


def test_log_sweep_uses_the_drivers_splits_without_reading_the_data_again(wandb_sweep, tmp_path, monkeypatch):
    from medsweep import data
    from medsweep.reporting import tracking

    run_dir, _, _, _ = wandb_sweep
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    config = compose_config(["+sweep=smoke", "tracker=wandb", "tracker.log_examples=true", f"tracker.dir={tmp_path}"],
                            run_dir=run_dir)
    splits = data.load_splits(config["data"])
    monkeypatch.setattr(data, "load_splits", lambda *args, **kwargs: pytest.fail("the splits were loaded again"))
    tracking.log_sweep(config, run_dir, None, splits=splits)
    (table_file,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/validation_examples_*.table.json")
    table = json.loads(table_file.read_text())
    assert [row[0] for row in table["data"]][:3] == splits.validation["text"].head(3).tolist()


def test_report_plots_are_real_images_and_the_index_shows_them(wandb_sweep):
    from PIL import Image

    run_dir, _, proc, _ = wandb_sweep
    report = run_dir / "report"
    assert f"report: {report / 'index.html'}" in proc.stdout
    index = (report / "index.html").read_text()
    for name in REPORT_PLOTS:
        with Image.open(report / f"{name}.png") as image:
            image.verify()
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert f'src="{name}.png"' in index
    assert "Not drawn" not in index


def test_the_reliability_diagram_shows_the_ece_metrics_json_reports(wandb_sweep, tmp_path):
    from medsweep.release import layout
    from medsweep.reporting import model_plots

    run_dir, _, _, _ = wandb_sweep
    saved = layout.read_test_predictions(run_dir / "promoted")
    figure, ece = model_plots.calibration_plot(saved["labels"], saved["probs"], tmp_path)
    assert ece == pytest.approx(layout.read_metrics(run_dir / "promoted")["test"]["test_ece"], abs=1e-12)
    assert f"{ece:.3f}" in figure.caption and "15 equal-width bins" in figure.caption


def test_report_command_rebuilds_the_report_without_hydra(wandb_sweep, tmp_path):
    run_dir, _, _, _ = wandb_sweep
    copy = tmp_path / "copied_run"
    subprocess.run(["cp", "-a", str(run_dir), str(copy)], check=True)
    for png in (copy / "report").glob("*.png"):
        png.unlink()
    # -X importtime lists every module imported: Hydra must not be among them.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "medsweep.report", str(copy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.stem for p in (copy / "report").glob("*.png")} == set(REPORT_PLOTS)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "medsweep" in imported and "hydra" not in imported and "omegaconf" not in imported

    missing = subprocess.run([sys.executable, "-m", "medsweep.report", str(tmp_path / "nope")], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_tracker_settings_are_checked_before_any_trial(tmp_path, monkeypatch):
    from medsweep.reporting import tracking
    from medsweep.config import validate

    with pytest.raises(ConfigError, match="tracker.mode"):
        validate(compose_config(["tracker=wandb", "tracker.mode=sometimes"]))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match="no W&B credentials"):
        tracking.check(compose_config(["tracker=wandb", "tracker.mode=online"]))
    tracking.check(compose_config(["tracker=wandb"]))  # offline: no key needed
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    tracking.check(compose_config(["tracker=wandb", "tracker.mode=online"]))


def test_trial_runs_left_open_by_an_interrupted_sweep_are_finished_as_failed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from medsweep.reporting import tracking

    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    config = compose_config(["+sweep=smoke", "tracker=wandb"], run_dir=tmp_path)
    callback = tracking.TrialRuns(config)
    trial = SimpleNamespace(trial_id="t1", config={"trainer": {"learning_rate": 1e-3}})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(1, [], trial, {"val_f1_macro": 0.4, "val_loss": 1.2, "step": 7, "training_iteration": 1})
    callback.finish_all()  # what run_sweep's `finally` does when fit() is interrupted
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    # wandb's service process writes the exit record after finish() returns; on a loaded machine
    # (the suite beside a training run) it came later than the first read.
    deadline = time.time() + 30
    while (run := OfflineRun(folder)).exit is None and time.time() < deadline:
        time.sleep(0.5)
    assert run.exit == 1 and run.summary["status"] == "unfinished" and run.summary["best_val_f1_macro"] == 0.4
    assert run.config["trainer"]["learning_rate"] == 1e-3 and run.job_type == "trial"
    assert not callback.runs
