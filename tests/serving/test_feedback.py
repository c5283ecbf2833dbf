"""POST /feedback against a real uvicorn on 127.0.0.1 and a real SQLite database: the round trip with
the version that answered, 32 clients at once, the refusals, the de-identified text, the logs, and
the `python -m medsweep.feedback` export and summary."""

import csv
import json
import logging
import math
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from medsweep import feedback as feedback_cli
from medsweep.rundir import FEEDBACK_DB, RunDir
from medsweep.serving import serve
from medsweep.serving.feedback import RecentPredictions, Remembered, default_db, summarize, wilson
from medsweep.serving.inference import load_promoted
from tests.conftest import ROOT, serving, tiny_checkpoints

TOKEN = "feedback-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "Patient: Johanna Quixotic-Marlowe, MRN: 99887766, seen 03/14/2021 for acute myocardial infarction."


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A real promotion of a real tiny trial: the run's `promoted` link."""
    from medsweep.promotion.release import promote_checkpoint

    base = tmp_path_factory.mktemp("feedback")
    kept, _ = tiny_checkpoints(base)[-1]
    return promote_checkpoint(kept, base / "run")


def predict(url, texts, **kw):
    response = httpx.post(f"{url}/predict", json={"texts": texts}, headers=AUTH, timeout=60, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def rows(db):
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM feedback ORDER BY id")]


def test_default_database_is_the_run_dirs_beside_the_promoted_link(promoted, tmp_path):
    assert default_db(promoted) == RunDir(promoted.parent).feedback_db == promoted.parent / FEEDBACK_DB
    assert default_db(promoted.parent) == promoted.parent / FEEDBACK_DB  # the run dir itself
    version = promoted.resolve()
    assert default_db(version) == version.parent / FEEDBACK_DB  # a version folder: beside it


def test_feedback_round_trips_with_the_version_and_nothing_is_lost(promoted, tmp_path, caplog):
    db = tmp_path / "fb.sqlite"
    model = load_promoted(promoted)
    labels = model.label_names
    caplog.set_level(logging.DEBUG)
    with serving(serve.create_app(model, TOKEN, feedback_db=str(db))) as url:
        answer = predict(url, [SECRET] + [f"Ischemic stroke, case {i}." for i in range(32)])
        ids = [p["prediction_id"] for p in answer["predictions"]]
        assert len(set(ids)) == 33 and all(len(i) == 36 and i[14] == "4" for i in ids)  # UUID4s
        first = answer["predictions"][0]
        right = next(n for n in labels if n != first["label"])
        saved = httpx.post(f"{url}/feedback", json={"prediction_id": ids[0], "label": right, "comment": "wrong class"},
                           headers=AUTH, timeout=30)
        assert saved.status_code == 200, saved.text
        assert saved.json()["model_version"] == "v001" and saved.json()["agrees"] is False
        [row] = rows(db)
        assert (row["prediction_id"], row["model_version"], row["predicted_label"], row["right_label"], row["agrees"],
                row["comment"], row["text"], row["text_pair"], row["deidentified"]) == \
               (ids[0], "v001", first["label"], right, 0, "wrong class", SECRET, None, 0)
        with sqlite3.connect(db) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        # 32 clients at once, one feedback each: exactly 32 more rows, none lost.
        results, barrier = [], threading.Barrier(32)

        def client(i):
            barrier.wait()
            results.append(httpx.post(f"{url}/feedback", json={"prediction_id": ids[i + 1], "label": labels[i % len(labels)]},
                                      headers=AUTH, timeout=60).status_code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 32
        saved_rows = rows(db)
        assert len(saved_rows) == 33
        assert sorted(r["prediction_id"] for r in saved_rows[1:]) == sorted(ids[1:])

        # The refusals.
        assert httpx.post(f"{url}/feedback", json={"prediction_id": "00000000-0000-4000-8000-000000000000",
                                                   "label": labels[0]}, headers=AUTH).status_code == 404
        bad = httpx.post(f"{url}/feedback", json={"prediction_id": ids[1], "label": "not-a-label"}, headers=AUTH)
        assert bad.status_code == 422 and "not-a-label" not in bad.text
        assert httpx.post(f"{url}/feedback", json={"prediction_id": ids[1], "label": labels[0]}).status_code == 401
        assert httpx.post(f"{url}/feedback", json={"prediction_id": ids[1], "label": labels[0]},
                          headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert httpx.post(f"{url}/feedback", content=b"{" + b" " * 2_000_000 + b"}",
                          headers={**AUTH, "content-type": "application/json"}).status_code == 413
        assert len(rows(db)) == 33
    # The text (and its identifiers) never reached a log record.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "predicted 33 text(s)" in logged and "feedback saved" in logged
    assert "Quixotic" not in logged and "99887766" not in logged and "Ischemic stroke, case" not in logged


def test_text_is_masked_where_the_model_was_trained_deidentified(promoted, tmp_path):
    folder = tmp_path / "deid_model"
    shutil.copytree(promoted.resolve(), folder)
    config = yaml.safe_load((folder / "medsweep_config.yaml").read_text())
    config["data"]["deidentify"] = True
    (folder / "medsweep_config.yaml").write_text(yaml.safe_dump(config))
    model = load_promoted(folder)
    with serving(serve.create_app(model, TOKEN)) as url:  # default database: beside the model folder
        [p] = predict(url, [SECRET])["predictions"]
        assert httpx.post(f"{url}/feedback", json={"prediction_id": p["prediction_id"], "label": p["label"],
                                                   "comment": "Dr. Smith agrees"}, headers=AUTH).status_code == 200
    [row] = rows(tmp_path / FEEDBACK_DB)
    assert row["deidentified"] == 1 and row["agrees"] == 1
    assert "Quixotic" not in row["text"] and "99887766" not in row["text"] and "03/14/2021" not in row["text"]
    assert "[NAME]" in row["text"] and "[MRN]" in row["text"] and "myocardial infarction" in row["text"]
    assert row["comment"] == "Dr. [NAME] agrees"


def test_a_text_pair_is_kept_with_its_text(promoted, tmp_path):
    folder = tmp_path / "pair_model"
    shutil.copytree(promoted.resolve(), folder)
    config = yaml.safe_load((folder / "medsweep_config.yaml").read_text())
    config["data"]["text_pair_column"] = "context"
    (folder / "medsweep_config.yaml").write_text(yaml.safe_dump(config))
    db = tmp_path / "sub" / "pairs.sqlite"
    with serving(serve.create_app(load_promoted(folder), TOKEN, feedback_db=str(db))) as url:
        [p] = httpx.post(
            f"{url}/predict", json={"texts": ["Is aspirin useful?"], "text_pairs": ["Aspirin after infarction."]},
            headers=AUTH, timeout=60).json()["predictions"]
        assert httpx.post(f"{url}/feedback", json={"prediction_id": p["prediction_id"], "label": p["label"]},
                          headers=AUTH).status_code == 200
    [row] = rows(db)
    assert (row["text"], row["text_pair"], row["agrees"]) == ("Is aspirin useful?", "Aspirin after infarction.", 1)


def test_serve_takes_feedback_db():
    from medsweep.serving.args import parse

    assert parse(serve.ServeArgs, ["model=m", "feedback_db=/tmp/x.sqlite"]).feedback_db == "/tmp/x.sqlite"
    assert parse(serve.ServeArgs, ["model=m"]).feedback_db is None


def test_recent_predictions_are_bounded():
    recent = RecentPredictions(capacity=3)
    item = Remembered("t", None, "a", {}, "v1", ("a",), False, "now")
    keys = [recent.remember(item) for _ in range(5)]
    assert len(recent) == 3 and recent.get(keys[0]) is None and recent.get(keys[1]) is None
    assert recent.get(keys[4]) is item
    by_size = RecentPredictions(capacity=100, max_chars=25)
    note = Remembered("x" * 10, None, "a", {}, "v1", ("a",), False, "now")
    keys = [by_size.remember(note) for _ in range(4)]
    assert len(by_size) == 2 and by_size.get(keys[1]) is None and by_size.get(keys[3]) is note


def test_wilson_interval():
    low, high = wilson(8, 10)
    assert abs(low - 0.4902) < 1e-3 and abs(high - 0.9433) < 1e-3  # the textbook 8/10 interval
    assert all(math.isnan(v) for v in wilson(0, 0))


def write_db(path):
    """A database as the service writes it: v001 right 2 of 3, v002 wrong once."""
    from medsweep.serving.feedback import FeedbackStore

    store = FeedbackStore(path)
    for version, predicted, right in [("v001", "a", "a"), ("v001", "a", "b"), ("v001", "b", "b"), ("v002", "b", "a")]:
        store.add("id", Remembered("=cmd|' /C calc'!A0", None, predicted, {}, version, ("a", "b"), False, "t"), right)


def test_export_and_summary_cli(tmp_path):
    db = tmp_path / "fb.sqlite"
    write_db(db)
    out = tmp_path / "out" / "fb.csv"
    proc = subprocess.run([sys.executable, "-m", "medsweep.feedback", "export", f"db={db}", f"output={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "4 feedback row(s)" in proc.stderr
    exported = list(csv.DictReader(open(out)))
    assert [(r["model_version"], r["predicted_label"], r["right_label"], r["agrees"]) for r in exported] == \
           [("v001", "a", "a", "1"), ("v001", "a", "b", "0"), ("v001", "b", "b", "1"), ("v002", "b", "a", "0")]
    assert all(r["text"] == "'=cmd|' /C calc'!A0" for r in exported)  # inert in a spreadsheet

    proc = subprocess.run([sys.executable, "-m", "medsweep.feedback", "summary", f"db={db}", "format=json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary == json.loads(json.dumps(summarize(db)))
    assert summary["v001"]["n"] == 3 and abs(summary["v001"]["agreement"] - 2 / 3) < 1e-9
    low, high = summary["v001"]["agreement_ci95"]
    assert (low, high) == pytest.approx(wilson(2, 3))
    assert summary["v001"]["confusion"] == {"a": {"a": 1, "b": 1}, "b": {"b": 1}}
    assert summary["v002"] == {"n": 1, "agreement": 0.0, "agreement_ci95": pytest.approx(list(wilson(0, 1))),
                               "confusion": {"b": {"a": 1}}}

    text = subprocess.run([sys.executable, "-m", "medsweep.feedback", "summary", f"db={db}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "v001: 3 feedback, agreement 0.667" in text.stdout and "v002: 1 feedback" in text.stdout

    # One-line errors, exit 2.
    assert feedback_cli.main(["summary", f"db={tmp_path / 'missing.sqlite'}"]) == 2
    assert feedback_cli.main(["export", f"db={db}"]) == 2  # no output=
    assert feedback_cli.main(["bogus"]) == 2
    assert feedback_cli.main(["--help"]) == 0


def test_the_cli_server_keeps_feedback_in_the_run_dir_and_never_logs_the_text(promoted, tmp_path):
    """`python -m medsweep.serve model=<run>/promoted` with its access log on: feedback lands in
    <run>/feedback.sqlite, and neither the note nor the comment is in the server's output."""
    from tests.conftest import free_port
    from tests.serving.test_predict_serve import start_server, stop, wait_healthy

    run = tmp_path / "run"
    shutil.copytree(promoted.parent, run, symlinks=True)  # the run dir, its `promoted` link relative
    db = run / FEEDBACK_DB
    port, log_path = free_port(), tmp_path / "serve.log"
    proc = start_server([f"model={run / 'promoted'}", f"port={port}"], {serve.TOKEN_ENV: TOKEN}, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, log_path)
        [p] = predict(base, [SECRET])["predictions"]
        saved = httpx.post(f"{base}/feedback", json={"prediction_id": p["prediction_id"], "label": p["label"],
                                                     "comment": "Seen by Dr. Zebulon Farquharson"}, headers=AUTH)
        assert saved.status_code == 200, saved.text
    finally:
        stop(proc)
    log = log_path.read_text()
    assert '"POST /feedback HTTP/1.1" 200' in log and "feedback saved" in log  # the access log was on
    assert "Quixotic" not in log and "99887766" not in log and "Farquharson" not in log
    [row] = rows(db)
    assert row["text"] == SECRET and row["model_version"] == "v001"
