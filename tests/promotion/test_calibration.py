"""promotion/calibration.py on synthetic data from known models: the temperature it fits, the LAC
threshold's coverage guarantee, and the statistics metrics.json reports."""

import math

import numpy as np
import pytest

from medsweep.config import ConfigError
from medsweep.promotion import calibration
from medsweep.serving.inference import prediction_sets, refer_rule


def sample(rng, n: int, k: int = 4, scale: float = 2.0):
    """(true logits, labels drawn from softmax(true logits)): a known multinomial model."""
    logits = rng.normal(0.0, scale, size=(n, k))
    probs = calibration.softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, np.minimum(labels, k - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 3.0])
def test_the_fitted_temperature_recovers_a_known_over_or_under_confidence(true_temperature):
    logits, labels = sample(np.random.default_rng(0), 20000)
    # A model whose logits are the true ones times T: dividing by T is the right correction.
    fitted = calibration.fit_temperature(logits * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # ... and it really is the NLL minimum: nudging it either way costs likelihood.
    nll = lambda t: calibration.nll_per_row(labels, calibration.softmax(logits * true_temperature / t)).mean()  # noqa: E731
    assert nll(fitted) < nll(fitted * 1.1) and nll(fitted) < nll(fitted / 1.1)


def test_a_temperature_outside_the_accepted_range_is_refused_in_one_line():
    logits, labels = sample(np.random.default_rng(1), 2000)
    with pytest.raises(ConfigError) as refused:
        calibration.fit_temperature(logits * 100.0, labels)  # T ~ 100 > 20
    assert "temperature 99.8" in str(refused.value) and "outside [0.05, 20.0]" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(ConfigError):
        calibration.fit_temperature(logits * 0.01, labels)  # far under-confident: T ~ 0.01 < 0.05
    with pytest.raises(ConfigError):
        calibration.fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int))


def test_lac_threshold_is_the_conformal_rank_of_the_scores():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1, 0])
    scores = np.sort(1 - probs[np.arange(5), labels])  # 0.1, 0.2, 0.3, 0.45, 0.6
    # n = 5: rank ceil(6 * 0.5) = 3 -> the 3rd smallest; ceil(6 * 0.8) = 5 -> the largest.
    assert calibration.lac_threshold(probs, labels, 0.5) == pytest.approx(scores[2])
    assert calibration.lac_threshold(probs, labels, 0.8) == pytest.approx(scores[4])
    # rank ceil(6 * 0.9) = 6 > n: too few rows for 90%, every label is in every set.
    assert calibration.lac_threshold(probs, labels, 0.9) == 1.0
    assert prediction_sets(probs, 1.0).all()
    # n = 9 at 0.9: (n+1)(1-alpha) = 9 exactly, no rounding up to 10 by floating point.
    nine = np.tile(probs, (2, 1))[:9], np.tile(labels, 2)[:9]
    assert calibration.lac_threshold(*nine, 0.9) == pytest.approx(np.sort(1 - nine[0][np.arange(9), nine[1]])[8])


def conditional_coverage(rng, threshold: float, n: int = 400_000) -> float:
    """The exact coverage of LAC sets at `threshold` under the known model: the mean over x of the
    probability mass of the labels in its set (no label sampling noise)."""
    logits, _ = sample(rng, n)
    probs = calibration.softmax(logits)
    return float((probs * prediction_sets(probs, threshold)).sum(axis=1).mean())


def test_lac_sets_cover_the_truth_at_the_promised_rate_on_exchangeable_data():
    from scipy.stats import beta

    rng = np.random.default_rng(2)
    coverage, n_cal, n_test = 0.9, 2000, 20000
    cal_logits, cal_labels = sample(rng, n_cal)
    threshold = calibration.lac_threshold(calibration.softmax(cal_logits), cal_labels, coverage)
    test_logits, test_labels = sample(rng, n_test)
    test_probs = calibration.softmax(test_logits)
    report = calibration.conformal_report(test_labels, test_probs, threshold, ["a", "b", "c", "d"], confidence=0.999)
    # Split-conformal theory: given the calibration set, coverage ~ Beta(k, n + 1 - k), k = ceil((n+1)(1-alpha)).
    k = math.ceil((n_cal + 1) * coverage)
    low, high = beta.ppf([0.0005, 0.9995], k, n_cal + 1 - k)
    truth = conditional_coverage(rng, threshold)
    assert low <= truth <= high, (truth, low, high)
    # The test sample's coverage estimates it: the truth lies in its Clopper-Pearson interval.
    ci = report["coverage_ci"]["interval"]
    assert ci[0] <= truth <= ci[1] and ci[0] <= report["coverage"] <= ci[1], (report, truth)
    assert abs(report["coverage"] - coverage) < 0.02
    assert 1.0 < report["mean_set_size"] < 4.0 and set(report["per_class"]) == {"a", "b", "c", "d"}
    # The check can fail: a threshold at the 80% rank misses the 90% promise by far.
    naive = calibration.lac_threshold(calibration.softmax(cal_logits), cal_labels, 0.8)
    assert conditional_coverage(rng, naive) < low


@pytest.mark.parametrize("n, coverage", [(500, 0.9), (101, 0.95), (2000, 0.8)])
def test_lac_threshold_and_sets_equal_mapies(n, coverage):
    """MAPIE (an optional test dependency: pip install mapie) on the same probabilities: same
    threshold, same sets."""
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Given(ClassifierMixin, BaseEstimator):
        """A fitted classifier whose inputs are its probabilities."""

        def fit(self, X, y):
            self.classes_ = np.arange(X.shape[1])
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    rng = np.random.default_rng(n)
    logits, labels = sample(rng, n + 300)
    probs = calibration.softmax(logits)
    mapie = SplitConformalClassifier(estimator=Given().fit(probs, labels), confidence_level=coverage,
                                     conformity_score="lac", prefit=True)
    mapie.conformalize(probs[:n], labels[:n])
    _, sets = mapie.predict_set(probs[n:])
    threshold = calibration.lac_threshold(probs[:n], labels[:n], coverage)
    assert threshold == pytest.approx(float(mapie._mapie_classifier.conformity_score_function_.quantiles_[0]), abs=1e-12)
    assert (prediction_sets(probs[n:], threshold) == sets[:, :, 0]).all()


def test_clopper_pearson_matches_scipy():
    from scipy.stats import binomtest

    for successes, trials in [(0, 10), (7, 10), (10, 10), (1800, 2000)]:
        expected = binomtest(successes, trials).proportion_ci(0.95, method="exact")
        assert calibration.clopper_pearson(successes, trials) == pytest.approx([expected.low, expected.high], abs=1e-9)


def test_probability_scores_are_the_mean_row_scores_with_intervals():
    logits, labels = sample(np.random.default_rng(3), 500)
    probs = calibration.softmax(logits)
    scores = calibration.probability_scores(labels, probs, 200, 0, 0.95)
    onehot = np.eye(4)[labels]
    assert scores["brier"] == pytest.approx(((probs - onehot) ** 2).sum(axis=1).mean())
    assert scores["nll"] == pytest.approx(-np.log(probs[np.arange(500), labels]).mean())
    for name in ("ece", "nll", "brier"):
        assert scores["ci"][name][0] <= scores[name] <= scores["ci"][name][1]


@pytest.mark.parametrize("rule, sizes, referred", [
    ("set_size>1", [0, 1, 2, 3], [False, False, True, True]),
    ("set_size!=1", [0, 1, 2], [True, False, True]),
    (" set_size >= 3 ", [2, 3], [False, True]),
])
def test_refer_rules(rule, sizes, referred):
    assert refer_rule(rule)(np.array(sizes)).tolist() == referred


@pytest.mark.parametrize("rule", ["set_size>", "size>1", "set_size>1; import os", "set_size>-1", "set_size~1"])
def test_a_malformed_refer_rule_is_one_line(rule):
    with pytest.raises(ConfigError) as refused:
        refer_rule(rule)
    assert len(str(refused.value).splitlines()) == 1
