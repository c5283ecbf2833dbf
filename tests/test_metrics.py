import math

import numpy as np
import pytest

from medsweep.metrics import auroc, classification_metrics, is_better, softmax


def test_softmax_rows_sum_to_one_and_keep_order():
    probs = softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]]))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0].argmax() == 2 and probs[1].argmax() == 0
    assert np.isfinite(probs).all()  # no overflow on large logits


def test_metrics_against_hand_computed_case():
    # 4 examples, 3 classes. Predictions: 0, 1, 1, 2 for labels 0, 1, 2, 2.
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])
    scores = classification_metrics(labels, probs)
    assert scores["accuracy"] == pytest.approx(3 / 4)
    # Per-class F1: class 0 = 1; class 1: P=1/2, R=1 -> 2/3; class 2: P=1, R=1/2 -> 2/3.
    assert scores["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # One-vs-rest AUROC: class 0 = 1; class 1: positives {0.7} vs negatives {0.1, 0.6, 0.2} -> 1;
    # class 2: positives {0.3, 0.7} vs negatives {0.1, 0.1}: 4/4 -> 1.
    assert scores["auroc"] == pytest.approx(1.0)


def test_auroc_binary_uses_positive_class_probability():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8]])
    # Positives {0.35, 0.8} vs negatives {0.1, 0.6}: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.6 -> 3/4.
    assert auroc(labels, probs) == pytest.approx(0.75)


def test_majority_class_collapse_is_not_flattered():
    labels = np.array([0, 0, 0, 1, 2])
    probs = np.tile([0.6, 0.2, 0.2], (5, 1))
    scores = classification_metrics(labels, probs)
    assert scores["accuracy"] == pytest.approx(0.6)
    # F1 for class 0 = 2*0.6*1/(1.6) = 0.75; classes 1 and 2 never predicted count as 0.
    assert scores["f1_macro"] == pytest.approx(0.75 / 3)


def test_auroc_skips_absent_classes_and_is_nan_with_one_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    assert auroc(np.array([0, 1, 0]), probs) == pytest.approx(1.0)  # class 2 absent: averaged over 0, 1
    assert math.isnan(auroc(np.array([0, 0, 0]), probs))


def test_is_better_ties_go_to_later_and_nan_never_wins():
    assert is_better(0.5, 0.4, "max") and not is_better(0.3, 0.4, "max")
    assert is_better(0.3, 0.4, "min") and is_better(0.4, 0.4, "max")
    assert not is_better(float("nan"), 0.1, "max") and is_better(0.1, None, "min")
