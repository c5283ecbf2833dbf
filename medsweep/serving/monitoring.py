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
Over the same window, the inputs themselves:
  - input_length: a two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) of the served
    inputs' character lengths (text plus pair) against the test rows'; an alert where its p-value is
    under `ks_alpha` (0.001: a window of in-distribution notes almost never reaches it), and
  - unknown_token_rate: the share of the served inputs' tokens (truncated at the model's max_length,
    no special tokens) that the tokenizer maps to its unknown id, against the test rows' share; an
    alert where it exceeds the reference's by more than `unk_margin` (0.01: one token in a hundred).
Both references are saved at promotion beside the probabilities (input_chars, input_tokens,
input_unknown in test_predictions.npz: numbers, never text); a folder promoted before they were
saved is judged on PSI alone (these two statistics are null there).
A reload to another version resets the window and takes the new folder's reference.

Feedback: the accuracy of the served version on the cases clinicians labelled (POST /feedback;
predictions answered `refer` left out, they claim no label) with its Wilson 95% interval, beside
the test accuracy at promotion (the argmax accuracy of the saved test predictions), in /health and
as gauges.
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
KS_ALPHA = 0.001
UNK_MARGIN = 0.01
CONFIDENCE_BINS = 5
FLOOR = 1e-4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# The endpoints named in the metrics; any other path is counted as "other" (a scanner's random
# paths must not make a label value each).
ENDPOINTS = ("/predict", "/feedback", "/explain", "/health", "/reload", "/metrics", "/openapi.json", "/")
SIGNALS = ("class_mix_psi", "confidence_psi", "input_length_ks", "unknown_token_rate")


def input_profile(tokenizer, texts, pairs, max_length: int) -> dict:
    """Per input: characters (text plus pair), tokens the model reads (truncated at max_length,
    without special tokens) and how many of them are the tokenizer's unknown id. The same function
    makes the reference at promotion and measures each served request, so the two compare."""
    chars = np.array([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)],
                     dtype=np.int64)
    unk = tokenizer.unk_token_id
    encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                        max_length=max_length, add_special_tokens=False)["input_ids"]
    tokens = np.array([len(ids) for ids in encoded], dtype=np.int64)
    # A tokenizer without an unknown token (byte-level BPE) can map nothing to it.
    unknown = np.array([sum(1 for i in ids if i == unk) if unk is not None else 0 for ids in encoded], dtype=np.int64)
    return {"input_chars": chars, "input_tokens": tokens, "input_unknown": unknown}


def nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


def psi(served: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two count (or share) vectors over the same bins."""
    served = np.asarray(served, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    a = np.maximum(served / max(served.sum(), 1e-12), FLOOR)
    e = np.maximum(reference / max(reference.sum(), 1e-12), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class Reference:
    """What served predictions are compared with: the test split's class mix and confidence bins,
    its argmax accuracy (where its labels are given) and, where saved, its inputs' lengths and
    unknown-token rate."""

    def __init__(self, probs: np.ndarray, bins: int = CONFIDENCE_BINS, labels=None, inputs: Optional[dict] = None):
        probs = np.asarray(probs, dtype=np.float64)
        self.accuracy = float(np.mean(probs.argmax(axis=1) == np.asarray(labels))) if labels is not None else None
        inputs = inputs or {}
        self.chars = np.asarray(inputs["input_chars"]) if "input_chars" in inputs else None
        tokens = int(np.sum(inputs["input_tokens"])) if "input_tokens" in inputs else 0
        self.unknown_rate = float(np.sum(inputs["input_unknown"])) / tokens if tokens else None
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
    return Reference(saved["probs"], labels=saved["labels"], inputs=saved.get("inputs"))


class Monitor:
    """The metrics of one app and the drift window. Thread-safe."""

    def __init__(self, window: int = WINDOW, min_window: int = MIN_WINDOW, threshold: float = PSI_THRESHOLD,
                 ks_alpha: float = KS_ALPHA, unk_margin: float = UNK_MARGIN):
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
        self.input_length_ks = Gauge("medsweep_drift_input_length_ks_pvalue",
                                     "Two-sample KS p-value of input lengths (characters) vs the test split", registry=r)
        self.input_length_ks_statistic = Gauge("medsweep_drift_input_length_ks_statistic",
                                               "Two-sample KS statistic of input lengths vs the test split", registry=r)
        self.unknown_token_rate = Gauge("medsweep_drift_unknown_token_rate",
                                        "Share of the window's tokens mapped to the tokenizer's unknown id", registry=r)
        self.unknown_token_reference = Gauge("medsweep_drift_unknown_token_rate_reference",
                                             "Share of the test split's tokens mapped to the unknown id", registry=r)
        self.window_size = Gauge("medsweep_drift_window", "Served predictions in the drift window", registry=r)
        self.alert = Gauge("medsweep_drift_alert", "1 where a drift statistic is over its threshold", ["name"],
                           registry=r)
        self.feedback_labelled = Gauge("medsweep_feedback_labelled", "Feedback-labelled predictions of the served "
                                       "version (refer answers left out)", registry=r)
        self.feedback_accuracy = Gauge("medsweep_feedback_accuracy", "Accuracy of the served version on "
                                       "feedback-labelled cases", registry=r)
        self.feedback_accuracy_ci = Gauge("medsweep_feedback_accuracy_ci95", "Wilson 95% interval of the feedback "
                                          "accuracy", ["bound"], registry=r)
        self.test_accuracy = Gauge("medsweep_test_accuracy", "Test accuracy of the served version at promotion",
                                   registry=r)
        for name in SIGNALS:
            self.alert.labels(name=name).set(0)
        for gauge in (self.class_mix_psi, self.confidence_psi, self.input_length_ks, self.input_length_ks_statistic,
                      self.unknown_token_rate, self.unknown_token_reference, self.feedback_accuracy,
                      self.feedback_accuracy_ci.labels(bound="low"), self.feedback_accuracy_ci.labels(bound="high"),
                      self.test_accuracy):
            gauge.set(float("nan"))
        self.window, self.min_window, self.threshold = window, min_window, threshold
        self.ks_alpha, self.unk_margin = ks_alpha, unk_margin
        # (predicted class index, confidence, characters, tokens, unknown tokens) per served input
        self._served: deque = deque(maxlen=window)
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
    def observe(self, model, probs: np.ndarray, answered: list, lengths: list, set_sizes=None,
                tokens=None, unknown=None) -> None:
        """One /predict answer: `probs` (n, labels), the labels answered, input lengths (characters),
        set sizes, and per input the tokens read and how many were unknown (input_profile)."""
        probs = np.asarray(probs, dtype=np.float64)
        confidence = probs.max(axis=1)
        n = len(probs)
        tokens = list(tokens) if tokens is not None else [0] * n
        unknown = list(unknown) if unknown is not None else [0] * n
        for label in answered:
            self.predicted.labels(label=label).inc()
        for value in confidence:
            self.confidence.observe(float(value))
        for value in lengths:
            self.input_length.observe(value)
        for value in (set_sizes if set_sizes is not None else ()):
            self.set_size.observe(int(value))
        with self._lock:
            self._follow(model)
            self._served.extend(zip(probs.argmax(axis=1).tolist(), confidence.tolist(), list(lengths), tokens, unknown))
            self._judge()

    def _follow(self, model) -> None:
        """Under the lock: the reference of the version being served."""
        if model.folder != self._folder:
            # Another version is being served: its own reference, a fresh window.
            self._folder = model.folder
            self._reference = load_reference(model.folder)
            self._served.clear()
            self.test_accuracy.set(float("nan") if self._reference is None or self._reference.accuracy is None
                                   else self._reference.accuracy)

    def _judge(self) -> dict:
        """The drift statistics of the window (under the lock); the gauges follow them."""
        n, reference = len(self._served), self._reference
        result = {name: None for name in SIGNALS}
        result.update(input_length_ks_statistic=None, unknown_token_rate_reference=None, window=n, alerts=[])
        if reference is None:
            result["reference"] = "none (the model folder has no test predictions)"
        elif n >= self.min_window:
            columns = list(zip(*self._served))
            classes, confidence = np.asarray(columns[0], dtype=np.int64), np.asarray(columns[1], dtype=np.float64)
            result["class_mix_psi"] = psi(np.bincount(classes, minlength=reference.num_labels), reference.class_mix)
            result["confidence_psi"] = psi(reference.confidence_counts(confidence), reference.confidence)
            alerts = [name for name in ("class_mix_psi", "confidence_psi") if result[name] > self.threshold]
            if reference.chars is not None and len(reference.chars):
                from scipy.stats import ks_2samp

                test = ks_2samp(np.asarray(columns[2], dtype=np.float64), reference.chars.astype(np.float64))
                result["input_length_ks"], result["input_length_ks_statistic"] = float(test.pvalue), float(test.statistic)
                if test.pvalue < self.ks_alpha:
                    alerts.append("input_length_ks")
            read = sum(columns[3])
            if reference.unknown_rate is not None and read:
                rate = sum(columns[4]) / read
                result["unknown_token_rate"], result["unknown_token_rate_reference"] = rate, reference.unknown_rate
                if rate > reference.unknown_rate + self.unk_margin:
                    alerts.append("unknown_token_rate")
            result["alerts"] = alerts
        self.window_size.set(n)
        for name in SIGNALS:
            value = result[name]
            getattr(self, name).set(float("nan") if value is None else value)
            self.alert.labels(name=name).set(int(name in result["alerts"]))
        self.input_length_ks_statistic.set(nan_if_none(result["input_length_ks_statistic"]))
        self.unknown_token_reference.set(nan_if_none(result["unknown_token_rate_reference"]))
        return result

    # --- feedback ------------------------------------------------------------------------------
    def feedback_accuracy_of(self, model, labelled: int, right: int) -> dict:
        """The served version's accuracy on `labelled` feedback-labelled cases, `right` of them
        right, with its Wilson 95% interval, beside the test accuracy at promotion; the gauges follow."""
        from medsweep.serving.feedback import wilson

        with self._lock:
            self._follow(model)
            reference = self._reference
        low, high = wilson(right, labelled)
        accuracy = right / labelled if labelled else None
        self.feedback_labelled.set(labelled)
        self.feedback_accuracy.set(nan_if_none(accuracy))
        self.feedback_accuracy_ci.labels(bound="low").set(low)
        self.feedback_accuracy_ci.labels(bound="high").set(high)
        return {"labelled": labelled, "accuracy": accuracy,
                "accuracy_ci95": [low, high] if labelled else None,
                "test_accuracy": reference.accuracy if reference is not None else None}

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
