"""GET /metrics and the drift in /health against a real uvicorn on 127.0.0.1 and a real promoted
tiny model: in-distribution Medical Abstracts notes raise no alert; PubMedQA's MeSH index terms
(another corpus: single keywords, other lengths and vocabulary) do.

The tiny random model (32 wide) predicts its majority class for every input and its confidences
all lie within about 0.002 of each other, so the class-mix PSI cannot move with it (that statistic
is checked without a server, below), and PubMedQA's questions or abstracts, which read like the
training abstracts, do not move its confidence histogram either (PSI ~0.08, as for in-distribution
notes). Its index terms do (see off_distribution): that is the off-distribution corpus here."""

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from medsweep.serving import serve
from medsweep.serving.inference import load_promoted
from medsweep.serving.monitoring import Monitor, Reference, psi
from tests.conftest import SHARED_DATA, serving, tiny_checkpoints

TOKEN = "monitor-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A real promotion of a real tiny trial (its test predictions are the drift reference)."""
    from medsweep.promotion.release import promote_checkpoint

    base = tmp_path_factory.mktemp("monitor")
    kept, _ = tiny_checkpoints(base)[-1]
    return promote_checkpoint(kept, base / "run")


def in_distribution(n: int) -> list[str]:
    """Medical Abstracts test rows, a seeded sample of all classes (the reference
    split is drawn from the same file)."""
    frame = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv")
    return frame["medical_abstract"].sample(n=n, random_state=0).tolist()


def off_distribution(n: int) -> list[str]:
    """PubMedQA's MeSH index terms, the first of each item ("Humans", "Aged", "Neoplasms"): keywords, not
    notes, as a misconfigured client would send. Measured on this fixture's model (in isolation, twice):
    confidence PSI 1.68 against the reference, vs 0.03 for Medical Abstracts rows; the whole MeSH lists
    joined by commas gave 0.23 alone and 0.18 under a loaded suite, too close to the 0.2 threshold."""
    data = json.loads((SHARED_DATA / "pubmedqa" / "ori_pqal.json").read_text())
    return [item["MESHES"][0] for item in list(data.values()) if item.get("MESHES")][:n]


def send(url, texts, batch=25):
    for start in range(0, len(texts), batch):
        response = httpx.post(f"{url}/predict", json={"texts": texts[start:start + batch]}, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text


def metric(text: str, name: str, /, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_drift_alerts_on_another_corpus_and_metrics_are_exposed(promoted, capsys):
    model = load_promoted(promoted)
    with serving(serve.create_app(model, TOKEN, max_batch=32)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["version"] == "v001"
        assert health["drift"]["window"] == 0 and health["drift"]["class_mix_psi"] is None

        send(url, in_distribution(150))
        drift = httpx.get(f"{url}/health").json()["drift"]
        with capsys.disabled():
            print("\nin-distribution drift:", drift)
        assert drift["window"] == 150 and drift["class_mix_psi"] is not None
        assert drift["alerts"] == [], drift

        # The window is the last 500: all of them from PubMedQA now.
        send(url, off_distribution(500))
        drift = httpx.get(f"{url}/health").json()["drift"]
        with capsys.disabled():
            print("off-distribution drift:", drift)
        assert drift["window"] == 500
        assert drift["alerts"], drift

        assert httpx.get(f"{url}/metrics").status_code == 401  # the token, as for /predict
        assert httpx.post(f"{url}/predict", json={"texts": []}, headers=AUTH).status_code == 422
        exposition = httpx.get(f"{url}/metrics", headers=AUTH)
        assert exposition.status_code == 200 and exposition.headers["content-type"].startswith("text/plain")
        text = exposition.text
    assert metric(text, "medsweep_requests_total", endpoint="/predict", status="200") == 26
    assert metric(text, "medsweep_requests_total", endpoint="/predict", status="422") == 1
    assert metric(text, "medsweep_request_errors_total", endpoint="/predict", kind="client") == 1
    assert metric(text, "medsweep_request_latency_seconds_count", endpoint="/predict") == 27
    assert sum(metric(text, "medsweep_predicted_class_total", label=name) for name in model.label_names
               if f'label="{name}"' in text) + (metric(text, "medsweep_predicted_class_total", label="refer")
                                                if 'label="refer"' in text else 0) == 650
    assert metric(text, "medsweep_prediction_confidence_count") == 650
    assert metric(text, "medsweep_prediction_set_size_count") == 650  # the tiny promoted folder has decision.json
    assert metric(text, "medsweep_input_length_chars_count") == 650
    assert metric(text, "medsweep_drift_window") == 500
    assert metric(text, "medsweep_drift_class_mix_psi") == pytest.approx(drift["class_mix_psi"])
    assert metric(text, "medsweep_drift_confidence_psi") == pytest.approx(drift["confidence_psi"])
    for name in ("class_mix_psi", "confidence_psi"):
        assert metric(text, "medsweep_drift_alert", name=name) == (1.0 if name in drift["alerts"] else 0.0)
    assert "myocardial" not in text.lower()  # no text in the metrics


def test_psi_and_the_window_without_a_server():
    assert psi([10, 10, 10], [5, 5, 5]) == pytest.approx(0.0)
    assert psi([30, 0, 0], [10, 10, 10]) > 0.2
    rng = np.random.default_rng(0)
    reference = Reference(rng.dirichlet(np.ones(4) * 5, size=400))
    assert len(reference.edges) == 4 and reference.confidence.sum() == 400

    class Model:  # what Monitor reads of the model being served
        folder = None

    monitor = Monitor(window=200, min_window=100)
    monitor._folder, monitor._reference = None, reference  # the reference as if loaded from the folder
    probs = rng.dirichlet(np.ones(4) * 5, size=99)
    monitor.observe(Model, probs, ["a"] * 99, [10] * 99)
    assert monitor.drift()["class_mix_psi"] is None  # under the minimum: not judged
    monitor.observe(Model, rng.dirichlet(np.ones(4) * 5, size=101), ["a"] * 101, [10] * 101)
    assert monitor.drift()["alerts"] == [] and monitor.drift()["window"] == 200
    skewed = np.tile([0.97, 0.01, 0.01, 0.01], (200, 1))  # one class, all confident
    monitor.observe(Model, skewed, ["a"] * 200, [10] * 200)
    assert sorted(monitor.drift()["alerts"]) == ["class_mix_psi", "confidence_psi"]


def test_another_version_resets_the_window_and_takes_its_reference(promoted, tmp_path):
    """A reload to another folder: its own reference (its test predictions), a fresh window."""
    monitor = Monitor(window=500, min_window=2)

    class Served:
        folder = promoted.resolve()

    class Other:
        folder = tmp_path  # no test_predictions.npz: served without drift

    probs = np.tile([0.1, 0.2, 0.3, 0.2, 0.2], (3, 1))
    monitor.observe(Served, probs, ["a"] * 3, [5] * 3)
    assert monitor.drift()["window"] == 3 and monitor.drift()["class_mix_psi"] is not None
    monitor.observe(Other, probs[:1], ["a"], [5])
    drift = monitor.drift()
    assert drift["window"] == 1 and drift["class_mix_psi"] is None and drift["reference"].startswith("none")
