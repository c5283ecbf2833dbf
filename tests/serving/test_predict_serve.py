"""predict CLI and HTTP service round-trip real Medical Abstracts text through a promoted tiny model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from medsweep.serving import predict
from medsweep.serving import serve
from medsweep.config import ConfigError
from medsweep.promotion.release import promote_checkpoint
from medsweep.serving.inference import load_promoted
from tests.conftest import ROOT, SHARED_DATA, TINY, compose_config, free_port, tiny_checkpoints

TOKEN = "test-token-0123456789abcdef"
TEXT_COLUMN = "medical_abstract"  # what the model was trained on (conf/data/medical_abstracts.yaml)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> str:
    """A real promotion of a real tiny trial (its last checkpoint)."""
    from medsweep.promotion.release import promote_checkpoint

    base = tmp_path_factory.mktemp("promoted")
    kept, _ = tiny_checkpoints(base)[-1]
    return str(promote_checkpoint(kept, base / "run"))


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """The first sentence (the title) of a few real abstracts, one per class and then some."""
    frame = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv")
    picked = frame.groupby("condition_label").head(2)["medical_abstract"]
    return [text.split(". ")[0] + "." for text in picked]


def run_predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsweep.predict", *args], cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_predict_cli_round_trips_real_text(promoted, sentences, tmp_path):
    source = tmp_path / "notes.csv"
    pd.DataFrame({"id": [f"n{i}" for i in range(len(sentences))], TEXT_COLUMN: sentences}).to_csv(source, index=False)
    proc = run_predict(f"model={promoted}", f"input={source}", f"output={tmp_path / 'out.csv'}", "id_column=id")
    assert proc.returncode == 0, proc.stderr

    model = load_promoted(promoted)
    labels = model.label_names
    out = pd.read_csv(tmp_path / "out.csv")
    # The promoted folder has a conformal threshold (decision.json): the set column comes last.
    assert list(out.columns) == ["id", "predicted_label"] + [f"prob_{name}" for name in labels] + ["prediction_set"]
    assert out["id"].tolist() == [f"n{i}" for i in range(len(sentences))]  # one row per input, in order
    probs = out[[f"prob_{name}" for name in labels]].to_numpy()
    np.testing.assert_allclose(probs, model.predict(sentences), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert out["predicted_label"].tolist() == [labels[i] for i in probs.argmax(axis=1)]

    # JSONL with another column name, chosen on the command line.
    source = tmp_path / "notes.jsonl"
    source.write_text("".join(json.dumps({"note": s}) + "\n" for s in sentences))
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'out2.csv'}", "text_column=note"]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "out2.csv")[[f"prob_{n}" for n in labels]].to_numpy(), probs, atol=1e-6)


def test_predict_text_pairs_from_the_models_config(promoted, sentences, tmp_path):
    # A copy of the promoted model that says it was trained on (abstract, context) pairs.
    pair_model = tmp_path / "pair_model"
    shutil.copytree(os.path.realpath(promoted), pair_model)
    config = yaml.safe_load((pair_model / "medsweep_config.yaml").read_text())
    config["data"]["text_pair_column"] = "context"
    (pair_model / "medsweep_config.yaml").write_text(yaml.safe_dump(config))
    contexts = list(reversed(sentences))
    source = tmp_path / "pairs.csv"
    pd.DataFrame({TEXT_COLUMN: sentences, "context": contexts}).to_csv(source, index=False)

    assert predict.main([f"model={pair_model}", f"input={source}", f"output={tmp_path / 'out.csv'}"]) == 0
    model = load_promoted(pair_model)
    got = pd.read_csv(tmp_path / "out.csv")[[f"prob_{n}" for n in model.label_names]].to_numpy()
    np.testing.assert_allclose(got, model.predict(sentences, contexts), atol=1e-6)
    assert np.abs(got - model.predict(sentences)).max() > 1e-4  # the pair really went in

    # The pair column can be overridden, or switched off.
    pd.DataFrame({TEXT_COLUMN: sentences, "question": contexts}).to_csv(source, index=False)
    assert predict.main([f"model={pair_model}", f"input={source}", f"output={tmp_path / 'q.csv'}", "text_pair_column=question"]) == 0
    assert predict.main([f"model={pair_model}", f"input={source}", f"output={tmp_path / 's.csv'}", "text_pair_column="]) == 0
    probs = [f"prob_{n}" for n in model.label_names]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "q.csv")[probs].to_numpy(), got, atol=1e-6)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")[probs].to_numpy(), model.predict(sentences), atol=1e-6)


def test_ids_a_spreadsheet_would_run_as_formulas_are_written_inert(promoted, tmp_path):
    """OWASP CSV injection: an id that starts with =, +, -, @ (or a tab / carriage return) reaches a
    clinician's spreadsheet as text, not as a formula; other ids are written exactly as given."""
    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "n-7", "plain"]
    source = tmp_path / "notes.csv"
    pd.DataFrame({"id": hostile, TEXT_COLUMN: ["Acute myocardial infarction."] * len(hostile)}).to_csv(source, index=False)
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'out.csv'}", "id_column=id"]) == 0
    written = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)["id"].tolist()
    assert written == ["'" + value for value in hostile[:5]] + ["n-7", "plain"]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t")) for cell in written)


def test_a_lone_surrogate_in_a_json_lines_input_is_one_line_naming_the_row(promoted, tmp_path, capsys):
    source = tmp_path / "notes.jsonl"
    # json.dumps writes the lone surrogate as the escape \ud800, as another program would.
    source.write_text(json.dumps({"note": "Acute myocardial infarction."}) + "\n" + json.dumps({"note": "bad \ud800 text"}) + "\n")
    code = predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'out.csv'}", "text_column=note"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "line 2" in err and "'note'" in err and "surrogate" in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("case, message", [
    ("missing_file", "input file not found"),
    ("missing_column", f"column '{TEXT_COLUMN}' not found"),
    ("header_only", "has a header but no data rows"),  # the training data's readers (data/formats.py)
    ("empty_file", "is empty"),
    ("blank_text", f"1 empty value(s) in column '{TEXT_COLUMN}'"),
    ("wrong_suffix", "input must be a .csv or .jsonl file"),
    ("not_a_model", "is not a model folder"),
    ("unknown_argument", "unknown argument 'modle'"),
    ("no_output_folder", "output folder does not exist"),
    ("output_is_a_folder", "output is a folder, not a file"),
    ("max_length_past_positions", "max_length=513 is more than this model's 512 positions"),
])
def test_predict_errors_are_one_line_and_exit_2(promoted, tmp_path, capsys, case, message):
    source = tmp_path / "in.csv"
    output = tmp_path / "out.csv"
    model = promoted
    pd.DataFrame({TEXT_COLUMN: ["Acute myocardial infarction.", "Colon adenocarcinoma."]}).to_csv(source, index=False)
    extra = []
    if case == "missing_file":
        source = tmp_path / "nope.csv"
    elif case == "missing_column":
        pd.DataFrame({"note": ["Acute myocardial infarction."]}).to_csv(source, index=False)
    elif case == "header_only":
        source.write_text(f"{TEXT_COLUMN}\n")
    elif case == "empty_file":
        source.write_text("")
    elif case == "blank_text":
        pd.DataFrame({TEXT_COLUMN: ["Acute myocardial infarction.", "  "]}).to_csv(source, index=False)
    elif case == "wrong_suffix":
        source = source.rename(tmp_path / "in.txt")
    elif case == "not_a_model":
        model = str(tmp_path)
    elif case == "unknown_argument":
        extra = ["modle=x"]
    elif case == "no_output_folder":
        output = tmp_path / "missing" / "out.csv"
    elif case == "output_is_a_folder":
        output = tmp_path / "out.csv"
        output.mkdir()
    elif case == "max_length_past_positions":
        extra = ["max_length=513"]
    code = predict.main([f"model={model}", f"input={source}", f"output={output}", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medsweep.predict: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not output.is_file() and not list(tmp_path.rglob("*.tmp"))  # nothing written, nothing left behind


def expected_sets(model, probs) -> list[list[str]]:
    """Each row's labels with 1 - p <= the folder's threshold, computed here from scratch."""
    return [[name for name, p in zip(model.label_names, row) if 1.0 - p <= model.conformal_threshold] for row in probs]


def test_predict_writes_the_prediction_set_and_refers_by_set_size(promoted, sentences, tmp_path):
    model = load_promoted(promoted)
    assert model.conformal_threshold is not None
    probs = model.predict(sentences)
    sets = expected_sets(model, probs)
    sizes = [len(s) for s in sets]
    source = tmp_path / "notes.csv"
    pd.DataFrame({TEXT_COLUMN: sentences}).to_csv(source, index=False)

    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'sets.csv'}"]) == 0
    out = pd.read_csv(tmp_path / "sets.csv", keep_default_na=False)
    assert [cell.split("|") if cell else [] for cell in out["prediction_set"]] == sets
    assert out["predicted_label"].tolist() == [model.label_names[i] for i in probs.argmax(axis=1)]

    # Refer the rows whose set is larger than the median size: some are referred, some not, when sizes differ.
    bound = int(np.median(sizes))
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'refer.csv'}",
                         f"refer_when=set_size>{bound}"]) == 0
    referred = pd.read_csv(tmp_path / "refer.csv", keep_default_na=False)
    assert referred["predicted_label"].tolist() == [
        "refer" if size > bound else model.label_names[i] for size, i in zip(sizes, probs.argmax(axis=1))]
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'all.csv'}",
                         f"refer_when=set_size>={min(sizes)}"]) == 0
    assert set(pd.read_csv(tmp_path / "all.csv")["predicted_label"]) == {"refer"}
    # The probabilities are the same with or without a rule.
    columns = [f"prob_{n}" for n in model.label_names]
    np.testing.assert_array_equal(referred[columns].to_numpy(), out[columns].to_numpy())


def without_decision(promoted, tmp_path):
    """A copy of the promoted folder as every model promoted before issue 27 is: no decision.json."""
    from medsweep.release import layout

    folder = tmp_path / "old_model"
    shutil.copytree(os.path.realpath(promoted), folder)
    (folder / layout.DECISION_FILE).unlink()
    return folder


def test_a_folder_without_decision_json_predicts_exactly_as_before(promoted, sentences, tmp_path, capsys):
    old = without_decision(promoted, tmp_path)
    assert load_promoted(old).conformal_threshold is None
    source = tmp_path / "notes.csv"
    pd.DataFrame({TEXT_COLUMN: sentences}).to_csv(source, index=False)
    assert predict.main([f"model={old}", f"input={source}", f"output={tmp_path / 'old.csv'}"]) == 0
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'new.csv'}"]) == 0
    before, now = pd.read_csv(tmp_path / "old.csv"), pd.read_csv(tmp_path / "new.csv")
    labels = load_promoted(old).label_names
    assert list(before.columns) == ["predicted_label"] + [f"prob_{n}" for n in labels]
    pd.testing.assert_frame_equal(before, now.drop(columns=["prediction_set"]))
    # A referral rule needs sets: refused in one line, nothing written.
    capsys.readouterr()
    assert predict.main([f"model={old}", f"input={source}", f"output={tmp_path / 'r.csv'}", "refer_when=set_size>1"]) == 2
    err = capsys.readouterr().err
    assert "refer_when needs prediction sets" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.csv").exists()
    assert predict.main([f"model={promoted}", f"input={source}", f"output={tmp_path / 'r.csv'}", "refer_when=size>1"]) == 2
    assert "refer_when must look like set_size>1" in capsys.readouterr().err


def test_serve_returns_prediction_sets_and_refers(promoted, sentences, tmp_path):
    from tests.conftest import serving

    model = load_promoted(promoted)
    probs = model.predict(sentences)
    sets = expected_sets(model, probs)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(serve.create_app(model, TOKEN, refer_when="set_size>1")) as url:
        response = httpx.post(f"{url}/predict", json={"texts": sentences}, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["prediction_set"] for p in predictions] == sets
    assert [p["set_size"] for p in predictions] == [len(s) for s in sets]
    assert [p["label"] for p in predictions] == [
        "refer" if len(s) > 1 else model.label_names[i] for s, i in zip(sets, probs.argmax(axis=1))]
    got = np.array([[p["probabilities"][n] for n in model.label_names] for p in predictions])
    np.testing.assert_allclose(got, probs, atol=1e-6)

    # A folder without decision.json answers as before (with its prediction_id for POST /feedback):
    # no set fields at all...
    old = load_promoted(without_decision(promoted, tmp_path))
    with serving(serve.create_app(old, TOKEN)) as url:
        response = httpx.post(f"{url}/predict", json={"texts": sentences}, headers=auth, timeout=60)
    assert response.status_code == 200 and response.json()["version"] == "v001"
    assert all(set(p) == {"label", "probabilities", "prediction_id"} for p in response.json()["predictions"])
    # ...and a referral rule for it is refused before the service starts.
    with pytest.raises(ConfigError, match="refer_when needs prediction sets"):
        serve.create_app(old, TOKEN, refer_when="set_size>1")


# --- serve -----------------------------------------------------------------------------------------

def start_server(args: list[str], env: dict, log_path) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != serve.TOKEN_ENV}
    full_env.update(env)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "medsweep.serve", *args], cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen, base: str, log_path, timeout_s: float = 120) -> None:
    """Until /health answers 200; the server's log in the failure if it exits or never answers."""
    deadline = time.time() + timeout_s
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "server did not come up: " + log_path.read_text()
        time.sleep(0.25)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.mark.parametrize("env, args, message", [
    ({}, [], "refusing to start without a bearer token"),
    ({}, ["allow_no_auth=true", "host=0.0.0.0"], "only allowed on a loopback host"),
    ({serve.TOKEN_ENV: "short"}, [], "is too short"),
    # Clients send the token without the space or newline; the server would refuse every request.
    ({serve.TOKEN_ENV: " " * 24}, [], "is only whitespace"),
    ({serve.TOKEN_ENV: TOKEN + "\n"}, [], "starts or ends with whitespace"),
    ({serve.TOKEN_ENV: " " + TOKEN}, [], "starts or ends with whitespace"),
    ({serve.TOKEN_ENV: TOKEN[:8] + " " + TOKEN[8:]}, [], "printable ASCII without spaces"),
    ({serve.TOKEN_ENV: TOKEN}, ["refer_when=set_size>>1"], "refer_when must look like set_size>1"),
])
def test_serve_refuses_to_start_without_a_proper_token(promoted, tmp_path, env, args, message):
    proc = start_server([f"model={promoted}", *args], env, tmp_path / "serve.log")
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert message in log and len(log.strip().splitlines()) == 1, log


def test_resolve_token_allows_no_auth_only_on_loopback():
    assert serve.resolve_token("127.0.0.1", allow_no_auth=True, environ={}) is None
    assert serve.resolve_token("0.0.0.0", allow_no_auth=False, environ={serve.TOKEN_ENV: TOKEN}) == TOKEN
    with pytest.raises(ConfigError):
        serve.resolve_token("10.0.0.1", allow_no_auth=True, environ={})


def test_serve_round_trips_real_text_with_auth_and_limits(promoted, sentences, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    proc = start_server([f"model={promoted}", "host=127.0.0.1", f"port={port}", "max_request_bytes=20000", "max_batch=10"],
                        {serve.TOKEN_ENV: TOKEN}, log_path)
    try:
        wait_healthy(proc, base, log_path)

        model = load_promoted(promoted)
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["status"] == "ok" and health["labels"] == model.label_names and health["version"] == "v001"

        body = {"texts": sentences}
        assert httpx.post(f"{base}/predict", json=body, timeout=30).status_code == 401
        wrong = httpx.post(f"{base}/predict", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"

        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = httpx.post(f"{base}/predict", json=body, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = model.predict(sentences)
        assert len(predictions) == len(sentences)
        got = np.array([[p["probabilities"][name] for name in model.label_names] for p in predictions])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert [p["label"] for p in predictions] == [model.label_names[i] for i in expected.argmax(axis=1)]

        # Limits: too many bytes (declared, and streamed without a declared length), too many texts.
        big = {"texts": [sentences[0] * 50] * 8}
        assert httpx.post(f"{base}/predict", json=big, headers=auth, timeout=30).status_code == 413
        streamed = (chunk for chunk in [json.dumps(big).encode()[i:i + 4096] for i in range(0, len(json.dumps(big)), 4096)])
        assert httpx.post(f"{base}/predict", content=streamed, headers={**auth, "content-type": "application/json"},
                          timeout=30).status_code == 413
        assert httpx.post(f"{base}/predict", json={"texts": sentences[:1] * 11}, headers=auth, timeout=30).status_code == 413
        # Text in a query string (not how the API takes it) must not reach the access log either.
        assert httpx.get(f"{base}/predict", params={"text": sentences[1]}, timeout=30).status_code == 405
        invalid = httpx.post(f"{base}/predict", json={"texts": [sentences[0], 7]}, headers=auth, timeout=30)
        assert invalid.status_code == 422 and sentences[0] not in invalid.text  # errors do not echo the input

        # The schema is for token holders only; there is no /docs page (it would load scripts from a CDN).
        assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 401
        assert {"/predict", "/reload"} <= httpx.get(f"{base}/openapi.json", headers=auth, timeout=10).json()["paths"].keys()
        assert httpx.get(f"{base}/docs", headers=auth, timeout=10).status_code == 404
        # SIGHUP reloads the `promoted` link: a new promotion is served without a restart. (Last: the
        # module's promoted run now has v002.)
        run_dir = Path(promoted).parent
        promote_checkpoint(sorted(run_dir.parent.glob("ckpt*"))[-1], run_dir)  # the fixture's last checkpoint
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while httpx.get(f"{base}/health", timeout=10).json()["version"] != "v002":
            assert time.time() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert httpx.post(f"{base}/predict", json=body, headers=auth, timeout=60).json()["version"] == "v002"
    finally:
        stop(proc)
    log = log_path.read_text()
    assert '"POST /predict HTTP/1.1" 200' in log and "predicted 10 text(s)" in log  # the access log is on...
    assert '"GET /predict?<redacted> HTTP/1.1" 405' in log
    assert not any(s[:40] in log for s in sentences)  # ...and no request text is in it
    assert "reloaded on SIGHUP: v001 -> v002" in log
