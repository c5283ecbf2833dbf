"""Probabilities a clinician can act on (issue 27): temperature scaling and split-conformal sets.

- Temperature scaling (Guo et al., 2017): one T > 0 fitted on held-out rows (the validation split, or
  the calibration split of data.calibration_fraction) by minimising the negative log-likelihood of
  softmax(logits / T); promotion bakes it into the classifier's last linear layer (weight and bias
  divided by T; in the adapter layout, the adapter's own copy of the head), so every loader
  (`transformers.pipeline`, medsweep.predict, medsweep.serve, PEFT) returns calibrated probabilities.
  T changes no argmax.
- Split-conformal prediction sets, LAC score (Sadinle, Lei & Wasserman, 2019): the nonconformity of
  a labelled row is 1 - p(true label); the threshold q is the ceil((n+1)(1-alpha))-th smallest of
  the n calibration scores, and a row's set is every label with 1 - p <= q. On exchangeable data the
  set holds the true label with probability >= 1 - alpha. Applying q (a comparison) is serving's
  job (serving/inference.py: prediction_sets); fitting it is here.

Pure numpy/scipy (and torch only to find and scale the classifier layer of a loaded model).
"""

from __future__ import annotations

import math

import numpy as np

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import bootstrap_intervals, resampled_metrics
from medsweep.serving.inference import prediction_sets

# A fitted temperature outside this range means the validation split or the model is broken (logits
# that carry no information, labels shuffled): refused, never baked in (promotion then publishes the
# model uncalibrated and says so: see promotion/release.py calibrate).
TEMPERATURE_RANGE = (0.05, 20.0)
# The search range of log T: wider than the accepted range, so an out-of-range fit is seen as one.
_LOG_T_BOUNDS = (math.log(1e-3), math.log(1e3))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def nll_per_row(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """-log p(true label), a zero probability counted as the smallest positive double."""
    labels = np.asarray(labels)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], np.finfo(np.float64).tiny, 1.0))


def brier_per_row(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Multiclass Brier score of each row: squared distance to the one-hot label (0..2)."""
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return ((probs - onehot) ** 2).sum(axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean NLL of softmax(logits / T) (a 1-D convex problem in log T: bounded
    Brent search). Raises ConfigError (one line) when T falls outside TEMPERATURE_RANGE."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise ConfigError("promote.calibrate: the held-out split (validation, or calibration with "
                          "data.calibration_fraction) is empty, no temperature can be fitted")
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t))[rows, labels].mean())

    result = minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    temperature = float(math.exp(result.x))
    low, high = TEMPERATURE_RANGE
    if not (low <= temperature <= high) or not math.isfinite(temperature):
        raise ConfigError(f"the fitted temperature {temperature:.4g} is outside [{low}, {high}] "
                          f"(logits far over- or under-confident or carrying no information, or a degenerate held-out split)")
    return temperature


def lac_threshold(probs: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """The split-conformal LAC threshold q at `coverage` = 1 - alpha: the ceil((n+1)(1-alpha))-th
    smallest score 1 - p(true label) of the n calibration rows (1.0, every label, when that rank
    exceeds n: too few rows for the coverage asked)."""
    scores = 1.0 - np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    n = len(scores)
    if n == 0:
        raise ConfigError("promote.coverage: the held-out split (validation, or calibration with "
                          "data.calibration_fraction) is empty, no conformal threshold can be fitted")
    rank = math.ceil((n + 1) * coverage - 1e-12)  # the tolerance keeps e.g. 101 * 0.9 = 90.9 from rounding up wrongly
    if rank > n:
        return 1.0
    return float(np.clip(np.sort(scores)[rank - 1], 0.0, 1.0))


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> list[float]:
    """The exact (Clopper-Pearson) binomial interval of successes / trials."""
    from scipy.stats import beta

    tail = (1.0 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return [low, high]


def conformal_report(labels: np.ndarray, probs: np.ndarray, threshold: float, label_names: list[str],
                     confidence: float = 0.95) -> dict:
    """Empirical coverage of the sets on held-out rows (with its Clopper-Pearson interval), mean set
    size overall and per true class, and how often a set is empty, a singleton, or larger."""
    labels = np.asarray(labels)
    sets = prediction_sets(probs, threshold)
    covered = sets[np.arange(len(labels)), labels]
    sizes = sets.sum(axis=1)
    per_class = {}
    for k, name in enumerate(label_names):
        rows = labels == k
        if rows.any():
            per_class[name] = {"rows": int(rows.sum()), "coverage": float(covered[rows].mean()),
                               "mean_set_size": float(sizes[rows].mean())}
    return {
        "rows": int(len(labels)),
        "coverage": float(covered.mean()),
        "coverage_ci": {"confidence": confidence, "method": "Clopper-Pearson",
                        "interval": clopper_pearson(int(covered.sum()), len(labels), confidence)},
        "mean_set_size": float(sizes.mean()),
        "set_size_share": {"empty": float((sizes == 0).mean()), "one": float((sizes == 1).mean()),
                           "more": float((sizes > 1).mean())},
        "per_class": per_class,
    }


def probability_scores(labels: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                       confidence: float) -> dict:
    """ECE, NLL and Brier of a split, each with its percentile-bootstrap interval (the same
    resamples as the test metrics': evaluation.metrics.bootstrap_intervals)."""
    labels = np.asarray(labels)
    nll, brier = nll_per_row(labels, probs), brier_per_row(labels, probs)

    def statistics(weights: np.ndarray) -> dict:
        total = weights.sum(axis=1)
        return {"ece": resampled_metrics(labels, probs, weights)["ece"],
                "nll": weights @ nll / total, "brier": weights @ brier / total}

    intervals = bootstrap_intervals(statistics, len(labels), n_resamples, seed, confidence)
    full = statistics(np.ones((1, len(labels))))
    return {name: float(full[name][0]) for name in ("ece", "nll", "brier")} | {"ci": intervals}


# --- the model ------------------------------------------------------------------------------------

def output_layer(model):
    """The linear layer whose outputs are the model's logits: the last nn.Linear (in module order)
    with num_labels outputs (BERT's classifier, RoBERTa's classifier.out_proj, a decoder's score)."""
    import torch

    num_labels = model.config.num_labels
    candidates = [m for _, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not candidates:
        raise ConfigError(f"promote.calibrate: no linear layer with {num_labels} outputs found in "
                          f"{type(model).__name__}; promote.calibrate=false promotes it uncalibrated")
    return candidates[-1]


def bake_temperature(model, temperature: float) -> None:
    """Divide the classifier layer's weight and bias by T in place: logits / T from then on."""
    import torch

    layer = output_layer(model)
    with torch.no_grad():
        layer.weight.div_(temperature)
        if layer.bias is not None:
            layer.bias.div_(temperature)
