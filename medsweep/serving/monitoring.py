"""Monitoring the service: Prometheus metrics (GET /metrics) and drift against the promoted model's
own test split (in GET /health and as gauges).

Metrics, on a registry per app (tests and operators may start many apps in one process; the
global registry would mix them): requests by endpoint and status, latency, errors, the predicted
class, the confidence (top probability), the prediction-set size (models with decision.json), the
input length (characters of text plus pair). No metric carries text.

Drift: the reference is what the promoted folder saved of its test split at promotion
(test_predictions.npz: the probabilities). Over a sliding window of the last `window` served
predictions (at least `min_window` before judging), the population stability index (PSI) of
  - class_mix: the share of each predicted (argmax) class, and
  - confidence: the top probability, binned at the reference's quantiles (so that a model whose
    confidences are all close together, a small one, still has bins that tell shifts apart),
against the reference's. PSI = sum over bins of (served - reference) * ln(served / reference),
shares floored at 1e-4; over `threshold` (0.2, the usual "significant shift") is an alert.
A reload to another version resets the window and takes the new folder's reference.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Optional

import numpy as np

WINDOW = 500
MIN_WINDOW = 100
PSI_THRESHOLD = 0.2
CONFIDENCE_BINS = 5
FLOOR = 1e-4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# The endpoints named in the metrics; any other path is counted as "other" (a scanner's random
# paths must not make a label value each).
ENDPOINTS = ("/predict", "/feedback", "/health", "/reload", "/metrics", "/openapi.json")


def psi(served: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two count (or share) vectors over the same bins."""
    served = np.asarray(served, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    a = np.maximum(served / max(served.sum(), 1e-12), FLOOR)
    e = np.maximum(reference / max(reference.sum(), 1e-12), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class Reference:
    """What served predictions are compared with: the test split's class mix and confidence bins."""

    def __init__(self, probs: np.ndarray, bins: int = CONFIDENCE_BINS):
        probs = np.asarray(probs, dtype=np.float64)
        self.num_labels = probs.shape[1]
        self.class_mix = np.bincount(probs.argmax(axis=1), minlength=self.num_labels).astype(np.float64)
        confidence = probs.max(axis=1)
        # Inner edges at the reference quantiles (duplicates dropped): about equal reference mass per bin.
        self.edges = np.unique(np.quantile(confidence, np.linspace(0, 1, bins + 1)[1:-1]))
        self.confidence = self.confidence_counts(confidence)
        self.rows = len(probs)

    def confidence_counts(self, confidence) -> np.ndarray:
        return np.bincount(np.searchsorted(self.edges, np.asarray(confidence), side="right"),
                           minlength=len(self.edges) + 1).astype(np.float64)


def load_reference(folder) -> Optional[Reference]:
    """The reference of a promoted folder, or None where it saved no test predictions."""
    from medsweep.release.layout import read_test_predictions

    if folder is None:
        return None
    try:
        saved = read_test_predictions(folder)
    except Exception:  # noqa: BLE001 - a folder without a usable reference is served without drift
        return None
    if saved is None or len(saved["probs"]) == 0:
        return None
    return Reference(saved["probs"])


class Monitor:
    """The metrics of one app and the drift window. Thread-safe."""

    def __init__(self, window: int = WINDOW, min_window: int = MIN_WINDOW, threshold: float = PSI_THRESHOLD):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("medsweep_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("medsweep_request_latency_seconds", "Time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("medsweep_request_errors", "Requests answered with an error (4xx: client, 5xx: server)",
                              ["endpoint", "kind"], registry=r)
        self.predicted = Counter("medsweep_predicted_class", "Predictions by answered label", ["label"], registry=r)
        self.confidence = Histogram("medsweep_prediction_confidence", "Top probability of each prediction",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.set_size = Histogram("medsweep_prediction_set_size", "Size of each conformal prediction set",
                                  buckets=tuple(range(0, 11)), registry=r)
        self.input_length = Histogram("medsweep_input_length_chars", "Characters of each input (text plus pair)",
                                      buckets=LENGTH_BUCKETS, registry=r)
        self.class_mix_psi = Gauge("medsweep_drift_class_mix_psi", "PSI of the predicted-class mix vs the test split",
                                   registry=r)
        self.confidence_psi = Gauge("medsweep_drift_confidence_psi", "PSI of the confidence histogram vs the test split",
                                    registry=r)
        self.window_size = Gauge("medsweep_drift_window", "Served predictions in the drift window", registry=r)
        self.alert = Gauge("medsweep_drift_alert", "1 where a drift statistic is over its threshold", ["name"],
                           registry=r)
        for name in ("class_mix_psi", "confidence_psi"):
            self.alert.labels(name=name).set(0)
        self.class_mix_psi.set(float("nan"))
        self.confidence_psi.set(float("nan"))
        self.window, self.min_window, self.threshold = window, min_window, threshold
        self._served: deque = deque(maxlen=window)  # (predicted class index, confidence)
        self._lock = threading.Lock()
        self._folder = object()  # the folder whose reference is loaded (none yet)
        self._reference: Optional[Reference] = None

    # --- requests ------------------------------------------------------------------------------
    def request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint=endpoint, kind="server" if status >= 500 else "client").inc()

    # --- predictions ---------------------------------------------------------------------------
    def observe(self, model, probs: np.ndarray, answered: list, lengths: list, set_sizes=None) -> None:
        """One /predict answer: `probs` (n, labels), the labels answered, input lengths, set sizes."""
        probs = np.asarray(probs, dtype=np.float64)
        confidence = probs.max(axis=1)
        for label in answered:
            self.predicted.labels(label=label).inc()
        for value in confidence:
            self.confidence.observe(float(value))
        for value in lengths:
            self.input_length.observe(value)
        for value in (set_sizes if set_sizes is not None else ()):
            self.set_size.observe(int(value))
        with self._lock:
            if model.folder != self._folder:
                # Another version is being served: its own reference, a fresh window.
                self._folder = model.folder
                self._reference = load_reference(model.folder)
                self._served.clear()
            self._served.extend(zip(probs.argmax(axis=1).tolist(), confidence.tolist()))
            self._judge()

    def _judge(self) -> dict:
        """The drift statistics of the window (under the lock); the gauges follow them."""
        n, reference = len(self._served), self._reference
        result = {"class_mix_psi": None, "confidence_psi": None, "window": n, "alerts": []}
        if reference is None:
            result["reference"] = "none (the model folder has no test predictions)"
        elif n >= self.min_window:
            classes = np.fromiter((c for c, _ in self._served), dtype=np.int64, count=n)
            confidence = np.fromiter((p for _, p in self._served), dtype=np.float64, count=n)
            result["class_mix_psi"] = psi(np.bincount(classes, minlength=reference.num_labels), reference.class_mix)
            result["confidence_psi"] = psi(reference.confidence_counts(confidence), reference.confidence)
            result["alerts"] = [name for name in ("class_mix_psi", "confidence_psi") if result[name] > self.threshold]
        self.window_size.set(n)
        for name in ("class_mix_psi", "confidence_psi"):
            value = result[name]
            getattr(self, name).set(float("nan") if value is None else value)
            self.alert.labels(name=name).set(int(name in result["alerts"]))
        return result

    def drift(self) -> dict:
        with self._lock:
            return self._judge()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MeasureRequests:
    """ASGI middleware: every HTTP request's endpoint, status and latency go to the app's Monitor
    (outermost, so that bodies refused for their size are counted too)."""

    def __init__(self, app, monitor: Monitor):
        self.app, self.monitor = app, monitor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.monitor.request(scope.get("path", ""), status, time.perf_counter() - started)
