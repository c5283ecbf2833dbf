"""The HTTP service against a real uvicorn on 127.0.0.1: one version per load, /reload while
requests are in flight (SIGHUP on the CLI server: tests/serving/test_predict_serve.py), a broken folder, hostile request bodies, and Schemathesis fuzzing
from the service's own OpenAPI schema."""

import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from medsweep.release import layout
from medsweep.promotion.release import promote_checkpoint
from medsweep.release.store import swap_link
from medsweep.serving import serve
from medsweep.serving.inference import PromotedModel, load_promoted
from tests.conftest import TINY, compose_config, serving

TOKEN = "http-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["Adenocarcinoma of the colon with hepatic metastases.", "Acute myocardial infarction.",
         "Ischemic stroke of the middle cerebral artery.", "Crohn disease of the terminal ileum."]


def train(base, name: str, overrides=()):
    """A real tiny trial; its last checkpoint, kept under base/name."""
    from medsweep.training.trial import run_trial

    kept = base / name

    def keep_last(report, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    run_trial(compose_config(TINY + list(overrides), run_dir=base / f"{name}-run"), on_evaluation=keep_last)
    return kept


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two different real trials (other seed and learning rate): two models that disagree."""
    base = tmp_path_factory.mktemp("http")
    return base, train(base, "a"), train(base, "b", ["trainer.seed=7", "trainer.learning_rate=1e-3"])


@pytest.fixture
def run_dir(checkpoints, tmp_path):
    """A run dir with v001 promoted from trial a; (run dir, promoted link)."""
    _, a, _ = checkpoints
    return tmp_path / "run", promote_checkpoint(a, tmp_path / "run")




def probabilities(response, labels) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([[p["probabilities"][n] for n in labels] for p in response.json()["predictions"]])


def test_reload_swaps_versions_and_requests_in_flight_finish_on_the_old_model(checkpoints, run_dir, monkeypatch):
    _, a, b = checkpoints
    run, link = run_dir
    v1 = load_promoted(link)
    labels = v1.label_names
    with serving(serve.create_app(v1, TOKEN)) as url:
        assert httpx.get(f"{url}/health").json()["version"] == "v001"
        p1 = probabilities(httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers=AUTH, timeout=30), labels)
        np.testing.assert_allclose(p1, v1.predict(TEXTS), atol=1e-6)

        promote_checkpoint(b, run)  # v002: a running server does not pick it up by itself...
        assert httpx.get(f"{url}/health").json()["version"] == "v001"
        assert httpx.post(f"{url}/reload", timeout=60).status_code == 401  # ...and reloading needs the token
        reloaded = httpx.post(f"{url}/reload", headers=AUTH, timeout=60)
        assert reloaded.status_code == 200 and reloaded.json() == {"version": "v002", "previous_version": "v001"}
        assert httpx.get(f"{url}/health").json()["version"] == "v002"
        answer = httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers=AUTH, timeout=30)
        p2 = probabilities(answer, labels)
        assert answer.json()["version"] == "v002"
        np.testing.assert_allclose(p2, load_promoted(run / "promoted-versions" / "v002").predict(TEXTS), atol=1e-6)
        assert np.abs(p2 - p1).max() > 1e-3  # another model really answers

        # In flight: v002's forward pass is held open; one request is inside it, one queued behind it.
        entered, release = threading.Event(), threading.Event()
        real_predict = PromotedModel.predict

        def held_predict(self, texts, pairs=None):
            if self.version == "v002" and texts != ["reload check"]:
                entered.set()
                assert release.wait(60)
            return real_predict(self, texts, pairs)

        monkeypatch.setattr(PromotedModel, "predict", held_predict)
        answers = {}

        def ask(key):
            answers[key] = httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers=AUTH, timeout=90)

        inside = threading.Thread(target=ask, args=("inside",))
        inside.start()
        assert entered.wait(30)
        queued = threading.Thread(target=ask, args=("queued",))
        queued.start()
        time.sleep(0.3)  # the second request is read and queued for v002 (its forward pass cannot start)
        promote_checkpoint(a, run)  # v003
        reloaded = httpx.post(f"{url}/reload", headers=AUTH, timeout=60)
        assert reloaded.json() == {"version": "v003", "previous_version": "v002"}
        assert "inside" not in answers and "queued" not in answers  # the swap did not wait for them
        release.set()
        inside.join(60)
        queued.join(60)
        for key in ("inside", "queued"):
            assert answers[key].json()["version"] == "v002", key
            np.testing.assert_allclose(probabilities(answers[key], labels), p2, atol=1e-6)
        after = httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers=AUTH, timeout=30)
        assert after.json()["version"] == "v003"
        np.testing.assert_allclose(probabilities(after, labels), p1, atol=1e-6)  # trial a again

        # A broken version (weights cut short) promoted behind the server's back: the reload is
        # refused in one line and the old model keeps serving.
        broken = run / "promoted-versions" / "v004"
        shutil.copytree(run / "promoted-versions" / "v003", broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        swap_link(run, broken)
        refused = httpx.post(f"{url}/reload", headers=AUTH, timeout=60)
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith("reload failed, still serving v003:") and "\n" not in detail, detail
        assert httpx.get(f"{url}/health").json()["version"] == "v003"
        np.testing.assert_allclose(probabilities(httpx.post(f"{url}/predict", json={"texts": TEXTS}, headers=AUTH,
                                                            timeout=30), labels), p1, atol=1e-6)
        # Not a model folder at all: the same, with the reader's own one-line reason.
        (broken / layout.MODEL_CONFIG).unlink()
        refused = httpx.post(f"{url}/reload", headers=AUTH, timeout=60)
        assert refused.status_code == 409 and "is not a model folder" in refused.json()["detail"]
        assert httpx.get(f"{url}/health").json()["version"] == "v003"


def test_hostile_bodies_get_one_line_4xx(checkpoints, run_dir):
    _, link = run_dir
    model = load_promoted(link)
    with serving(serve.create_app(model, TOKEN, max_batch=8)) as url:
        def post(body, **kwargs):
            content = body if isinstance(body, (bytes, str)) else json.dumps(body)
            return httpx.post(f"{url}/predict", content=content, headers={**AUTH, "content-type": "application/json"},
                              timeout=30, **kwargs)

        # Pairs sent to a model trained on single texts are refused, not silently used.
        answer = post({"texts": TEXTS[:2], "text_pairs": TEXTS[2:]})
        assert answer.status_code == 422 and "takes single texts" in answer.json()["detail"]
        # One lone surrogate in a batch: 422 naming the item, not a 500 for the whole batch.
        answer = post('{"texts": ["Acute myocardial infarction.", "abc \\ud800 def"]}')
        assert answer.status_code == 422 and answer.json()["detail"] == "texts[1] is not valid Unicode (a lone surrogate)"
        answer = post({"texts": ["Acute myocardial infarction.", " \t"]})
        assert answer.status_code == 422 and answer.json()["detail"] == "texts[1] is empty"
        for body in ["{", "[]", '{"texts": []}', '{"texts": "one"}', '{"texts": [null]}', '{"texts": [1e999]}',
                     '{"texts": ["a"], "text_pairs": 3}']:
            answer = post(body)
            assert answer.status_code == 422 and isinstance(answer.json()["detail"], list), (body, answer.text)
        # Bytes that are not UTF-8 at all: FastAPI's 400, one line.
        answer = post(b'{"texts": ["\xff"]}')
        assert answer.status_code == 400 and answer.json() == {"detail": "There was an error parsing the body"}
        # A surrogate in a good request's neighbour does not spoil it: the same texts still answer.
        np.testing.assert_allclose(probabilities(post({"texts": TEXTS}), model.label_names), model.predict(TEXTS),
                                   atol=1e-6)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(checkpoints, run_dir):
    """Fuzz every operation from the service's own OpenAPI schema (fetched with the token),
    valid and invalid bodies, bounded in examples and time."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    _, link = run_dir
    with serving(serve.create_app(load_promoted(link), TOKEN, max_batch=8)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH, timeout=10)
        # Too many texts is 413 (declared in the schema) where Schemathesis's default list of
        # rejections has only 400/422-style codes.
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        seen = []

        def fuzz(strategy, examples: int, seconds: float) -> None:
            stop_at = time.time() + seconds  # bounded in time as well as in examples

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                if time.time() < stop_at:
                    response = case.call_and_validate(base_url=url, headers=AUTH, timeout=30)
                    seen.append((case.method, case.path, response.status_code))

            run()

        # Most of the time on /predict, valid and invalid bodies; a few reloads (each loads the model).
        predict = schema["/predict"]["POST"]
        fuzz(predict.as_strategy(GenerationMode.POSITIVE), 50, 4)
        fuzz(predict.as_strategy(GenerationMode.NEGATIVE), 50, 4)
        for path, method in [("/reload", "POST"), ("/health", "GET"), ("/explain", "POST")]:
            operation = schema[path][method]
            fuzz(st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)),
                 6, 1)
    statuses = {status for _, _, status in seen}
    assert len(seen) >= 10, seen
    assert not [s for s in statuses if s >= 500], seen
    assert {"/predict", "/reload", "/health", "/explain"} <= {path for _, path, _ in seen}
    assert 200 in statuses and 422 in statuses  # valid and invalid bodies were both sent


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(checkpoints, run_dir, monkeypatch):
    _, link = run_dir
    model = load_promoted(link)
    expected = model.predict(TEXTS)
    calls, release = [], threading.Event()
    real_predict = PromotedModel.predict

    def counted(self, texts, pairs=None):
        calls.append(len(texts))
        assert release.wait(60)  # the first forward pass is held until every request has arrived
        return real_predict(self, texts, pairs)

    monkeypatch.setattr(PromotedModel, "predict", counted)
    answers = {}

    def ask(i):
        answers[i] = httpx.post(f"{url}/predict", json={"texts": [TEXTS[i % len(TEXTS)]]}, headers=AUTH, timeout=90)

    for batch_texts, most_passes in [(64, 2), (1, 12)]:  # batched; one request per forward pass
        calls.clear()
        release.clear()
        answers.clear()
        app = serve.create_app(model, TOKEN, batch_texts=batch_texts)
        with serving(app) as url:
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            deadline = time.time() + 60
            # Held until all twelve are in: one in the forward pass, the rest queued behind it.
            while not calls or sum(calls) + app.app.state.batcher.queue.qsize() < 12:
                assert time.time() < deadline, (calls, app.app.state.batcher.queue.qsize())
                time.sleep(0.02)
            release.set()
            for t in threads:
                t.join(60)
        assert len(calls) <= most_passes and sum(calls) == 12, calls
        for i, answer in answers.items():  # each request gets the probabilities of its own text
            np.testing.assert_allclose(probabilities(answer, model.label_names), expected[[i % len(TEXTS)]], atol=1e-6)
