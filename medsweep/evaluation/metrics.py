"""Classification metrics from predicted probabilities, computed with scikit-learn.

Every evaluation reports the same flat, numeric set (Ray Tune results are flat dicts of numbers):
accuracy, macro/weighted F1, macro precision/recall, AUROC, AUPRC, expected calibration error,
per-class F1 as `f1_class_<index>`, and for binary tasks sensitivity and specificity. Predictions
are the argmax of the probabilities (for two classes: the positive class wins above 0.5).

`bootstrap_ci` gives percentile confidence intervals for the same metrics (`bootstrap_intervals`
for any statistic of resampled rows: the subgroup audit uses it too); `best_of` is the one rule
for picking the best of several evaluations.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

# Reported by every evaluation; with the split prefix (val_ during the sweep, test_ for the promoted
# model) any of them can be `sweep.metric`. "loss" is the Trainer's own cross-entropy (validation only).
METRIC_NAMES = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
                "auroc", "auprc", "ece", "loss")
# Only for two-class tasks; class index 1 is the positive class.
BINARY_METRIC_NAMES = ("sensitivity", "specificity")
PER_CLASS_F1 = "f1_class_"
# Only with data.group_columns: the lowest score over the groups of every group column (evaluation/subgroups.py),
# so a sweep can optimise for, or be constrained by, its worst-served group.
WORST_GROUP_METRIC_NAMES = ("worst_group_accuracy", "worst_group_f1_macro")
# Lower is better for these; everything else is higher-is-better.
LOWER_IS_BETTER = ("ece", "loss")
ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def metric_names(num_classes: int, grouped: bool = False) -> list[str]:
    """Every scalar an evaluation of a `num_classes` task reports (without the split prefix);
    `grouped`: the data has group columns (data.group_columns)."""
    names = list(METRIC_NAMES)
    if num_classes == 2:
        names += BINARY_METRIC_NAMES
    if grouped:
        names += WORST_GROUP_METRIC_NAMES
    return names + [f"{PER_CLASS_F1}{k}" for k in range(num_classes)]


def is_metric_name(name: str) -> bool:
    """Whether `name` (without prefix) is one of the reported metrics, for some number of classes."""
    return (name in METRIC_NAMES or name in BINARY_METRIC_NAMES or name in WORST_GROUP_METRIC_NAMES
            or re.fullmatch(rf"{PER_CLASS_F1}\d+", name) is not None)


def _present(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels)


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC: binary on the positive class, else one-vs-rest macro average.

    Classes absent from `labels` have no defined one-vs-rest AUROC (a small validation subset can
    miss a rare class), so the average runs over the classes present. NaN if fewer than two are.
    """
    labels = np.asarray(labels)
    present = _present(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(np.mean([roc_auc_score(labels == k, probs[:, k]) for k in present]))


def auprc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, not interpolated):
    binary on the positive class, else one-vs-rest macro average over the classes present."""
    labels = np.asarray(labels)
    present = _present(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(average_precision_score(labels == 1, probs[:, 1]))
    return float(np.mean([average_precision_score(labels == k, probs[:, k]) for k in present]))


def calibration_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each confidence: n_bins equal-width bins over [0, 1], bin b = (b/n, (b+1)/n]
    (bin 0 also holds 0), the convention of Guo et al. 2017 ("On Calibration of Modern Neural
    Networks"). A confidence exactly on an edge goes to the lower bin."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, confidence, side="left")


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per calibration bin (see calibration_bins): how many predictions, their summed top-class
    confidence and how many were right. What the ECE and the report's reliability diagram are made of."""
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = calibration_bins(confidence, n_bins)
    return {"count": np.bincount(bins, minlength=n_bins).astype(np.float64),
            "confidence": np.bincount(bins, weights=confidence, minlength=n_bins),
            "correct": np.bincount(bins, weights=correct, minlength=n_bins)}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence: sum over bins of (bin size / n) * |accuracy - mean confidence|.

    Confidence is the max probability, correctness whether the argmax is the label; 15 equal-width
    bins (see calibration_bins). 0 is perfectly calibrated; empty bins contribute nothing.
    """
    bins = reliability(labels, probs, n_bins)
    # Per bin, n_b/n * |acc_b - conf_b| = |sum(correct_b) - sum(conf_b)| / n.
    return float(np.abs(bins["correct"] - bins["confidence"]).sum() / len(labels))


# The referred shares a risk-coverage curve is read at (the card's table; the plot draws every row).
RISK_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
CURVE_POINTS = 201


def risk_coverage(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray | None = None,
                  shares=RISK_SHARES) -> dict:
    """Selective classification: the rows ordered by confidence (the top probability, most confident
    first; ties keep row order), the least confident `share` referred to a clinician and the rest kept.
    For each share, the accuracy of the kept rows' labels (`predicted`, default the argmax; the
    served label when a decision rule moves it). `curve` holds every cut (k rows referred, k = 0..n-1)
    for a plot (at most CURVE_POINTS of them, evenly spaced); `at` the named shares (floor(share * n) rows referred)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted)
    order = np.argsort(-probs.max(axis=1), kind="stable")
    correct = (predicted[order] == labels[order]).astype(np.float64)
    n = len(labels)
    kept = np.arange(n, 0, -1)  # rows kept when 0..n-1 of the least confident are referred
    accuracy = np.cumsum(correct)[::-1] / kept
    at = [{"referred_share": float(share), "kept_rows": int(n - math.floor(share * n + 1e-9)),
           "accuracy_kept": float(accuracy[math.floor(share * n + 1e-9)])} for share in shares if share < 1.0]
    cuts = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).astype(int))  # metrics.json stays small
    return {"rows": n, "ordered_by": "top-class probability", "at": at,
            "curve": {"referred_share": (cuts / n).round(6).tolist(), "accuracy_kept": accuracy[cuts].round(6).tolist()}}


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """All reported metrics (flat, numeric) for integer labels and an (n, num_classes) probability matrix."""
    labels = np.asarray(labels)
    preds = probs.argmax(axis=-1)
    num_classes = probs.shape[1]
    # labels= keeps classes that were never predicted (or are absent) in the macro averages as 0, so
    # a model that collapses to the majority class is not flattered.
    all_classes = list(range(num_classes))
    per_class_f1 = f1_score(labels, preds, labels=all_classes, average=None, zero_division=0)
    scores = {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_macro": float(np.mean(per_class_f1)),
        "f1_weighted": float(f1_score(labels, preds, labels=all_classes, average="weighted", zero_division=0)),
        "precision_macro": float(precision_score(labels, preds, labels=all_classes, average="macro", zero_division=0)),
        "recall_macro": float(recall_score(labels, preds, labels=all_classes, average="macro", zero_division=0)),
        "auroc": auroc(labels, probs),
        "auprc": auprc(labels, probs),
        "ece": expected_calibration_error(labels, probs),
    }
    if num_classes == 2:
        # Undefined (NaN), not 0, when the split has no example of the class.
        scores["sensitivity"] = float(recall_score(labels, preds, pos_label=1, average="binary", zero_division=np.nan))
        scores["specificity"] = float(recall_score(labels, preds, pos_label=0, average="binary", zero_division=np.nan))
    scores.update({f"{PER_CLASS_F1}{k}": float(v) for k, v in enumerate(per_class_f1)})
    return scores


def name_per_class(scores: dict, label_names: list[str], prefix: str = "") -> dict:
    """`{prefix}f1_class_<i>` keys folded into `{prefix}f1_per_class: {label name: value}` (for people)."""
    pattern = re.compile(rf"{re.escape(prefix)}{PER_CLASS_F1}(\d+)")
    named, per_class = {}, {}
    for key, value in scores.items():
        match = pattern.fullmatch(key)
        if match and int(match.group(1)) < len(label_names):
            per_class[label_names[int(match.group(1))]] = value
        else:
            named[key] = value
    if per_class:
        named[f"{prefix}f1_per_class"] = per_class
    return named


def is_better(candidate: float, incumbent: float | None, mode: str) -> bool:
    """Whether a later evaluation beats the best so far. Ties go to the later one (more training
    at the same score), the same rule Ray's checkpoint manager uses, so that the leaderboard and
    the promoted checkpoint always name the same step."""
    if candidate is None or (isinstance(candidate, float) and math.isnan(candidate)):
        return False
    if incumbent is None or (isinstance(incumbent, float) and math.isnan(incumbent)):
        return True
    return candidate >= incumbent if mode == "max" else candidate <= incumbent


def best_of(items, score, mode: str):
    """The item with the best `score(item)` by is_better: ties go to the later item, an undefined
    score loses to any defined one; the first item if none is defined; None for no items. The one
    best-pick rule for a trial's evaluations, the checkpoints Ray kept and a configuration's runs."""
    best = None
    for item in items:
        if best is None or is_better(score(item), score(best), mode):
            best = item
    return best


# --- bootstrap ------------------------------------------------------------------------------------
# A bootstrap resample is a vector of counts (how often each example was drawn), so every metric of
# many resamples at once is a weighted metric: one matrix product instead of 1,000 x ~15 sklearn
# calls (about 20 s on a test split of 400). tests/evaluation/test_metrics.py checks that these weighted
# versions equal classification_metrics (sklearn) on the explicitly resampled rows.

def _divide(numerator: np.ndarray, denominator: np.ndarray, undefined: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), undefined)


def _ranking_scores(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision of one score column, one value per resample (row of
    `weights`); NaN where a resample lacks positives or negatives. Tied scores form one threshold,
    as in sklearn: a positive tied with a negative counts 1/2 in AUROC."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * positive[order], starts, axis=1)  # (B, thresholds), descending score
    neg_w = np.add.reduceat(w * ~positive[order], starts, axis=1)
    num_pos, num_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    defined = (num_pos > 0) & (num_neg > 0)

    # AUROC: each positive beats the negatives below its score and ties half of those at it.
    neg_below = num_neg[:, None] - np.cumsum(neg_w, axis=1)
    pairs = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    auc = _divide(pairs, num_pos * num_neg, np.nan)

    # Average precision: sum over thresholds of (recall gained) x (precision at that threshold).
    tp, fp = np.cumsum(pos_w, axis=1), np.cumsum(neg_w, axis=1)
    precision = _divide(tp, tp + fp, 0.0)
    ap = _divide((pos_w * precision).sum(axis=1), num_pos, np.nan)
    return np.where(defined, auc, np.nan), np.where(defined, ap, np.nan)


def resampled_metrics(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """classification_metrics for each row of `weights` (B, n): example i counted weights[b, i] times."""
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=np.float64)
    n, num_classes = probs.shape
    preds = probs.argmax(axis=1)
    total = weights.sum(axis=1)

    cell = np.zeros((n, num_classes * num_classes))
    cell[np.arange(n), labels * num_classes + preds] = 1.0
    confusion = (weights @ cell).reshape(-1, num_classes, num_classes)  # [b, true, predicted]
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    support, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    precision = _divide(tp, predicted, 0.0)
    recall = _divide(tp, support, 0.0)
    f1 = _divide(2 * tp, support + predicted, 0.0)

    confidence = probs.max(axis=1)
    correct = (preds == labels).astype(np.float64)
    in_bin = np.zeros((n, ECE_BINS))
    in_bin[np.arange(n), calibration_bins(confidence)] = 1.0
    gap = weights @ (in_bin * correct[:, None]) - weights @ (in_bin * confidence[:, None])

    if num_classes == 2:
        auc, ap = _ranking_scores(weights, labels == 1, probs[:, 1])
    else:
        per_class = [_ranking_scores(weights, labels == k, probs[:, k]) for k in range(num_classes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with < 2 classes: NaN, as in auroc()
            auc = np.nanmean(np.stack([a for a, _ in per_class]), axis=0)
            ap = np.nanmean(np.stack([p for _, p in per_class]), axis=0)

    scores = {
        "accuracy": tp.sum(axis=1) / total,
        "f1_macro": f1.mean(axis=1),
        "f1_weighted": _divide((f1 * support).sum(axis=1), support.sum(axis=1), 0.0),
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "auroc": auc,
        "auprc": ap,
        "ece": np.abs(gap).sum(axis=1) / total,
    }
    if num_classes == 2:
        scores["sensitivity"] = _divide(tp[:, 1], support[:, 1], np.nan)
        scores["specificity"] = _divide(tp[:, 0], support[:, 0], np.nan)
    scores.update({f"{PER_CLASS_F1}{k}": f1[:, k] for k in range(num_classes)})
    return scores


def bootstrap_weights(n: int, n_resamples: int, seed: int):
    """Bootstrap resamples of n rows as count vectors, in chunks of (resamples, n): numpy Generator
    seeded with `seed`, so the same data give the same intervals. Chunks keep the count matrix to
    ~16 MB whatever the split size."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_resamples, chunk):
        drawn = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        yield np.stack([np.bincount(row, minlength=n) for row in drawn]).astype(np.float64)


def bootstrap_intervals(statistics, n: int, n_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap interval [low, high] of every statistic `statistics(weights)` returns
    ({name: one value per resample row}). Resamples on which a statistic is undefined (NaN) are
    left out of its interval."""
    collected: dict[str, list[np.ndarray]] = {}
    for weights in bootstrap_weights(n, n_resamples, seed):
        for name, values in statistics(weights).items():
            collected.setdefault(name, []).append(values)
    tail = (1.0 - confidence) / 2 * 100
    intervals = {}
    for name, parts in collected.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        intervals[name] = [float(low), float(high)]
    return intervals


def bootstrap_ci(labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap confidence interval [low, high] of every metric in classification_metrics.

    It reflects the finite test set only, not the variation between training runs (that is what
    the seed re-runs measure).
    """
    labels = np.asarray(labels)
    return bootstrap_intervals(lambda weights: resampled_metrics(labels, probs, weights), len(labels),
                               n_resamples, seed, confidence)


def scores_with_intervals(labels: np.ndarray, probs: np.ndarray, label_names: list[str], prefix: str = "test_",
                          n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Every metric of a held-out split, its percentile-bootstrap CI and the confusion matrix,
    keyed for people (per-class F1 by label name): what metrics.json records for the test split."""
    from sklearn.metrics import confusion_matrix

    scores = {f"{prefix}{k}": v for k, v in classification_metrics(labels, probs).items()}
    intervals = bootstrap_ci(labels, probs, n_resamples=n_resamples, seed=seed, confidence=confidence)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(label_names))))
    return {
        prefix.rstrip("_"): name_per_class(scores, label_names, prefix=prefix),
        f"{prefix}ci": {
            "confidence": confidence,
            "method": "percentile bootstrap over test rows",
            "resamples": n_resamples,
            "seed": seed,
            "intervals": name_per_class({f"{prefix}{k}": v for k, v in intervals.items()}, label_names, prefix=prefix),
        },
        "confusion_matrix": {"rows": "true label", "columns": "predicted label", "labels": label_names,
                             "matrix": matrix.tolist()},
    }
