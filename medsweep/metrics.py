"""Classification metrics from predicted probabilities, computed with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

# What every evaluation reports; `sweep.metric` must be one of these with the split prefix
# (val_ during the sweep, test_ for the promoted model).
METRIC_NAMES = ("f1_macro", "auroc", "accuracy", "loss")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC: binary on the positive class, else one-vs-rest macro average.

    Classes absent from `labels` have no defined one-vs-rest AUROC (a small validation subset can
    miss a rare class), so the average runs over the classes present. NaN if fewer than two are.
    """
    labels = np.asarray(labels)
    num_classes = probs.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    per_class = [roc_auc_score(labels == k, probs[:, k]) for k in present]
    return float(np.mean(per_class))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro-F1, AUROC and accuracy for integer labels and an (n, num_classes) probability matrix."""
    labels = np.asarray(labels)
    preds = probs.argmax(axis=-1)
    all_classes = list(range(probs.shape[1]))
    return {
        # labels= keeps classes that were never predicted in the macro average (as F1 0), so a model
        # that collapses to the majority class is not flattered.
        "f1_macro": float(f1_score(labels, preds, labels=all_classes, average="macro", zero_division=0)),
        "auroc": auroc(labels, probs),
        "accuracy": float(accuracy_score(labels, preds)),
    }


def is_better(candidate: float, incumbent: float | None, mode: str) -> bool:
    """Whether a later evaluation beats the best so far. Ties go to the later one (more training
    at the same score), the same rule Ray's checkpoint manager uses, so that the leaderboard and
    the promoted checkpoint always name the same step."""
    if candidate is None or (isinstance(candidate, float) and math.isnan(candidate)):
        return False
    if incumbent is None or (isinstance(incumbent, float) and math.isnan(incumbent)):
        return True
    return candidate >= incumbent if mode == "max" else candidate <= incumbent
