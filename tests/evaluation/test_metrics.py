import math

import numpy as np
import pytest

from medsweep.evaluation.metrics import (
    auprc,
    auroc,
    bootstrap_ci,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    is_better,
    is_metric_name,
    metric_names,
    name_per_class,
    resampled_metrics,
    softmax,
)


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


def test_every_metric_of_the_hand_computed_case():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])
    scores = classification_metrics(labels, probs)
    # Per-class F1 1, 2/3, 2/3 with supports 1, 1, 2.
    assert [scores[f"f1_class_{k}"] for k in range(3)] == pytest.approx([1, 2 / 3, 2 / 3])
    assert scores["f1_weighted"] == pytest.approx((1 + 2 / 3 + 2 * 2 / 3) / 4)
    # Precision 1, 1/2, 1; recall 1, 1, 1/2.
    assert scores["precision_macro"] == pytest.approx(5 / 6) and scores["recall_macro"] == pytest.approx(5 / 6)
    assert "sensitivity" not in scores and "specificity" not in scores  # binary tasks only
    assert sorted(scores) == sorted(n for n in metric_names(3) if n != "loss")
    named = name_per_class({f"val_{k}": v for k, v in scores.items()}, ["a", "b", "c"], prefix="val_")
    assert named["val_f1_per_class"] == pytest.approx({"a": 1, "b": 2 / 3, "c": 2 / 3})
    assert not any(k.startswith("val_f1_class_") for k in named)


def test_auprc_is_average_precision_by_hand():
    # Binary, scores of the positive class sorted: 0.9(+) 0.8(+) 0.6(-) 0.4(+) 0.1(-).
    # Precision at each positive: 1/1, 2/2, 3/4 -> AP = (1 + 1 + 3/4) / 3.
    labels = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.9, 0.4, 0.6, 0.8])
    assert auprc(labels, np.c_[1 - p1, p1]) == pytest.approx(11 / 12)
    # Three classes, one-vs-rest. Class 1: 0.8(+) 0.5(-) 0.4(+) 0.3(-) -> (1 + 2/3) / 2; classes 0 and 2: 1.
    labels = np.array([0, 1, 2, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1]])
    assert auprc(labels, probs) == pytest.approx((1 + 5 / 6 + 1) / 3)
    assert math.isnan(auprc(np.array([1, 1]), probs[:2]))


def test_ece_by_hand_with_shared_and_separate_bins():
    # Confidences 0.91 (right) and 0.92 (wrong) share bin (13/15, 14/15]; 0.5 (right) is in bin 7,
    # 0.62 (right) in bin 9. ECE = 2/4*|0.5 - 0.915| + 1/4*|1 - 0.5| + 1/4*|1 - 0.62|.
    labels = np.array([0, 1, 1, 2])
    probs = np.array([[0.91, 0.05, 0.04], [0.92, 0.04, 0.04], [0.2, 0.5, 0.3], [0.1, 0.28, 0.62]])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.5 * 0.415 + 0.125 + 0.095)
    # Perfect calibration: confidence 0.75 everywhere and 3 of 4 right.
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)
    # Everything right at full confidence: 0; everything wrong at full confidence: 1.
    assert expected_calibration_error(np.array([0, 1]), np.eye(2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 0]), np.eye(2)) == pytest.approx(1.0)


def test_calibration_bins_are_15_equal_width_right_closed():
    edges = np.linspace(0, 1, 16)
    assert calibration_bins(np.array([0.0, 0.03, edges[1] + 1e-9, 0.5, 0.999, 1.0])).tolist() == [0, 0, 1, 7, 14, 14]


def test_binary_sensitivity_and_specificity_by_hand():
    # Labels 1 1 1 0 0, predictions 1 0 1 0 1: TP 2, FN 1, TN 1, FP 1.
    labels = np.array([1, 1, 1, 0, 0])
    p1 = np.array([0.8, 0.4, 0.7, 0.1, 0.6])
    scores = classification_metrics(labels, np.c_[1 - p1, p1])
    assert scores["sensitivity"] == pytest.approx(2 / 3) and scores["specificity"] == pytest.approx(1 / 2)
    assert scores["f1_class_1"] == pytest.approx(2 / 3)  # P = 2/3, R = 2/3
    # No positives: sensitivity is undefined, not 0.
    only_negatives = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.3, 0.7]]))
    assert math.isnan(only_negatives["sensitivity"]) and only_negatives["specificity"] == pytest.approx(0.5)


def test_metric_names_know_binary_and_per_class_metrics():
    assert "sensitivity" in metric_names(2) and "sensitivity" not in metric_names(5)
    assert "f1_class_4" in metric_names(5) and "f1_class_5" not in metric_names(5)
    assert is_metric_name("f1_class_12") and is_metric_name("ece") and not is_metric_name("runtime")


@pytest.mark.parametrize("num_classes, n", [(5, 60), (2, 40), (3, 7)])
def test_bootstrap_weighted_metrics_equal_sklearn_on_the_resampled_rows(num_classes, n):
    # Probabilities rounded to 0.1 make ties; n=7 makes resamples that miss classes.
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, n)
    probs = rng.dirichlet(np.ones(num_classes), n).round(1) + 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    draws = [rng.integers(0, n, n) for _ in range(25)]
    weights = np.stack([np.bincount(d, minlength=n) for d in draws])
    fast = resampled_metrics(labels, probs, weights)
    for b, rows in enumerate(draws):
        expected = classification_metrics(labels[rows], probs[rows])
        assert set(fast) == set(expected)
        for name, value in expected.items():
            assert fast[name][b] == pytest.approx(value, abs=1e-9, nan_ok=True), (name, b)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[labels])
    point = classification_metrics(labels, probs)
    first = bootstrap_ci(labels, probs, n_resamples=1000, seed=7)
    assert first == bootstrap_ci(labels, probs, n_resamples=1000, seed=7)
    assert first != bootstrap_ci(labels, probs, n_resamples=1000, seed=8)
    for name in ("accuracy", "f1_macro", "auroc", "auprc", "ece"):
        low, high = first[name]
        assert low < point[name] < high, name
        assert high - low < 0.2  # 300 rows: a few points wide, not the whole range


def test_risk_coverage_refers_the_least_confident_rows_first():
    from medsweep.evaluation.metrics import risk_coverage

    # Confidence 0.9, 0.8, 0.7, 0.6 (top class); the two least confident rows are wrong.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    curve = risk_coverage(labels, probs, shares=(0.0, 0.25, 0.5, 0.75))
    at = {p["referred_share"]: (p["kept_rows"], p["accuracy_kept"]) for p in curve["at"]}
    assert at == {0.0: (4, 0.5), 0.25: (3, 2 / 3), 0.5: (2, 1.0), 0.75: (1, 1.0)}
    assert curve["curve"]["accuracy_kept"] == pytest.approx([0.5, 2 / 3, 1.0, 1.0], abs=1e-6)
    assert curve["curve"]["referred_share"] == [0.0, 0.25, 0.5, 0.75]
    # The served labels, not the argmax, are scored when a decision rule moves them.
    moved = risk_coverage(labels, probs, predicted=np.array([0, 1, 1, 0]), shares=(0.0, 0.5))
    assert [p["accuracy_kept"] for p in moved["at"]] == [1.0, 1.0]


def test_risk_coverage_on_a_calibrated_sample_rises_and_its_curve_stays_small():
    from medsweep.evaluation.metrics import CURVE_POINTS, risk_coverage

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.5, size=5000)
    labels = np.array([rng.choice(3, p=p) for p in probs])  # calibrated by construction
    curve = risk_coverage(labels, probs)
    accuracy = [p["accuracy_kept"] for p in curve["at"]]
    assert accuracy == sorted(accuracy) and accuracy[-1] > accuracy[0] + 0.1
    # Kept rows are the most confident: their accuracy is their mean confidence, within noise.
    kept = np.sort(probs.max(axis=1))[::-1][:2500]
    assert accuracy[-1] == pytest.approx(kept.mean(), abs=0.03)
    assert len(curve["curve"]["referred_share"]) == CURVE_POINTS
