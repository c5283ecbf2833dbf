"""A decision rule for the sweep's objective (issue 27, item 2): per-class offsets on the log
probabilities, label = argmax_k(log p_k + b_k), fitted on the validation rows to maximise macro-F1.

The argmax maximises accuracy, not macro-F1: on imbalanced classes moving the boundary toward the
rare classes can raise macro-F1. The offsets are fitted by coordinate ascent over a grid (each
class's offset in turn, the others held), starting from 0 (plain argmax), so the rule is never worse
than argmax on the rows it was fitted on.

Applied only when it beats argmax by more than its own noise, judged honestly: the validation rows
are split in two folds; offsets fitted on one fold label the other, so every row gets an
out-of-fold label; a paired percentile bootstrap of macro-F1(rule) - macro-F1(argmax) over those
rows must have its lower bound above 0. Only then are offsets fitted on all validation rows kept.

For two-class screening, `promote.target_sensitivity` sets the positive class's offset instead: the
highest threshold on p(positive) that keeps validation sensitivity at the target, whatever the
specificity it costs (which the record states).
"""

from __future__ import annotations

import math

import numpy as np

GRID = np.round(np.linspace(-3.0, 3.0, 61), 6)  # offsets tried per class, in log-probability units
PASSES = 3  # coordinate-ascent passes over the classes
OPTIMISED = ("val_f1_macro",)  # the sweep metrics the offsets maximise (argmax is what the others want)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """sklearn's f1_score(average="macro", labels=range(k), zero_division=0), from one bincount: the
    fit and the bootstrap below call it thousands of times (tests check the two agree)."""
    counts = np.bincount(np.asarray(labels) * num_classes + np.asarray(predicted),
                         minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    tp = np.diag(counts).astype(np.float64)
    denominator = counts.sum(axis=0) + counts.sum(axis=1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1.mean())


def decide(log_probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(log_probs) + np.asarray(offsets), axis=1)


def fit_offsets(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Offsets maximising macro-F1 on these rows (coordinate ascent from 0; ties keep the smaller move)."""
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    k = log_probs.shape[1]
    offsets = np.zeros(k)
    best = macro_f1(labels, decide(log_probs, offsets), k)
    for _ in range(PASSES):
        improved = False
        for c in range(1, k):  # class 0 stays at 0: only differences between offsets matter
            for value in sorted(GRID, key=abs):
                trial = offsets.copy()
                trial[c] = value
                score = macro_f1(labels, decide(log_probs, trial), k)
                if score > best + 1e-12:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return offsets


def out_of_fold_gain(probs: np.ndarray, labels: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Macro-F1 of the rule minus argmax's on out-of-fold labels (2 folds, stratified by shuffling),
    with its paired percentile-bootstrap 95% interval."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    k = probs.shape[1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    folds = [order[: len(order) // 2], order[len(order) // 2:]]
    log_probs = np.log(np.clip(probs, 1e-12, 1.0))
    ruled = np.empty(len(labels), dtype=int)
    for fit_rows, label_rows in (folds, folds[::-1]):
        ruled[label_rows] = decide(log_probs[label_rows], fit_offsets(probs[fit_rows], labels[fit_rows]))
    argmax = probs.argmax(axis=1)
    differences = []
    for _ in range(n_resamples):
        rows = rng.integers(0, len(labels), len(labels))
        differences.append(macro_f1(labels[rows], ruled[rows], k) - macro_f1(labels[rows], argmax[rows], k))
    return {"gain": macro_f1(labels, ruled, k) - macro_f1(labels, argmax, k),
            "ci": [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))],
            "rows": int(len(labels)), "method": "2-fold out-of-fold labels, paired percentile bootstrap"}


def sensitivity_offsets(probs: np.ndarray, labels: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """Two classes: offsets [0, b] so that p(positive) >= t is positive, t the highest threshold with
    validation sensitivity >= target; returns (offsets, t)."""
    positive = np.asarray(probs, dtype=np.float64)[:, 1]
    scores = np.sort(positive[np.asarray(labels) == 1])
    if len(scores) == 0:
        return np.zeros(2), 0.5
    # Keep at least ceil(target * n) positives at or above t.
    keep = math.ceil(target * len(scores) - 1e-12)
    t = float(scores[len(scores) - keep]) if keep > 0 else 1.0
    t = min(max(t, 1e-9), 1 - 1e-9)
    # p1 >= t  <=>  log p1 + log((1 - t) / t) >= log p0; the argmax gives a tie to class 0, so a hair more
    # keeps the row at exactly t positive.
    return np.array([0.0, math.log((1 - t) / t) + 1e-9]), t


def choose_rule(probs: np.ndarray, labels: np.ndarray, metric: str, target_sensitivity: float | None,
                label_names: list[str]) -> dict:
    """The decision rule for decision.json and metrics.json: {"applied", "kind", "offsets", "why", ...}."""
    labels = np.asarray(labels)
    k = len(label_names)
    if target_sensitivity is not None and k == 2:
        offsets, t = sensitivity_offsets(probs, labels, target_sensitivity)
        predicted = decide(np.log(np.clip(probs, 1e-12, 1.0)), offsets)
        positives, negatives = labels == 1, labels == 0
        return {"applied": True, "kind": "sensitivity_threshold", "offsets": offsets.tolist(), "threshold": t,
                "target_sensitivity": target_sensitivity,
                "validation": {"sensitivity": float((predicted[positives] == 1).mean()) if positives.any() else None,
                               "specificity": float((predicted[negatives] == 0).mean()) if negatives.any() else None},
                "why": f"promote.target_sensitivity={target_sensitivity}: positive when p({label_names[1]}) >= {t:.4g}"}
    if metric not in OPTIMISED:
        return {"applied": False, "kind": "argmax", "why": f"{metric} is maximised by the argmax itself"}
    gain = out_of_fold_gain(probs, labels)
    if gain["ci"][0] <= 0:
        return {"applied": False, "kind": "argmax", "out_of_fold": gain,
                "why": f"offsets did not beat argmax by more than their noise (out-of-fold macro-F1 gain "
                       f"{gain['gain']:+.4f}, 95% CI [{gain['ci'][0]:+.4f}, {gain['ci'][1]:+.4f}])"}
    offsets = fit_offsets(probs, labels)
    return {"applied": True, "kind": "offsets", "offsets": offsets.tolist(), "out_of_fold": gain,
            "why": f"per-class offsets raise macro-F1 beyond their noise (out-of-fold gain {gain['gain']:+.4f}, "
                   f"95% CI [{gain['ci'][0]:+.4f}, {gain['ci'][1]:+.4f}])"}


def test_effect(probs: np.ndarray, labels: np.ndarray, offsets: list[float] | None) -> dict:
    """Test macro-F1 and accuracy of the rule and of plain argmax (the card states both)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    argmax = probs.argmax(axis=1)
    ruled = argmax if offsets is None else decide(np.log(np.clip(probs, 1e-12, 1.0)), offsets)
    return {"rule": {"f1_macro": macro_f1(labels, ruled, k), "accuracy": float((ruled == labels).mean())},
            "argmax": {"f1_macro": macro_f1(labels, argmax, k), "accuracy": float((argmax == labels).mean())}}
