"""Is B really better than A? The paired comparison of two models' probabilities on the same test rows.

Both models' predictions are resampled with the same bootstrap rows (metrics.bootstrap_weights, the
one bootstrap), so the interval of the difference B - A reflects only the test rows, not two
independent draws. A difference is significant when its 95% interval excludes 0. Accuracy also
gets McNemar's exact test: under "no difference", the rows that exactly one model gets right split
50/50 between the two (an exact binomial test, scipy.stats.binomtest).

`python -m medsweep.compare` (reporting/compare.py) reads promoted folders and writes compare.md;
the promotion gate (promotion/gate.py) compares a candidate with an earlier promoted model before
it is released. Both go through `compare_pair` and `check_same_test_split` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import (
    BINARY_METRIC_NAMES,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    bootstrap_intervals,
    classification_metrics,
    resampled_metrics,
)

# Every headline metric the test split has (the Trainer's loss is validation only).
HEADLINE = tuple(name for name in METRIC_NAMES if name != "loss")
CONFIDENCE = 0.95


@dataclass
class Model:
    name: str  # what the user typed
    folder: Path | None  # the resolved version folder (None: a candidate not written yet)
    metrics: dict  # metrics.json
    labels: np.ndarray
    probs: np.ndarray
    label_names: list[str]


def compared_metrics(num_classes: int) -> tuple[str, ...]:
    """The metrics a comparison reports for a task of `num_classes` classes."""
    return HEADLINE + (BINARY_METRIC_NAMES if num_classes == 2 else ())


def check_same_test_split(models: list[Model]) -> None:
    """The refusal: models scored on different test rows cannot be compared row by row."""
    base = models[0]
    base_print = (base.metrics.get("data_fingerprints") or {}).get("test")
    for other in models[1:]:
        other_print = (other.metrics.get("data_fingerprints") or {}).get("test")
        if base_print is None or other_print is None:
            raise ConfigError(f"cannot compare: {base.name if base_print is None else other.name} records no test "
                              "fingerprint in metrics.json")
        if other_print != base_print:
            raise ConfigError(f"cannot compare: {base.name} and {other.name} were tested on different test splits "
                              f"(fingerprints {base_print} and {other_print}); compare models tested on the same rows")
        if other.label_names != base.label_names:
            raise ConfigError(f"cannot compare: {base.name} and {other.name} have different labels "
                              f"({base.label_names} vs {other.label_names})")
        if other.labels.shape != base.labels.shape or not np.array_equal(other.labels, base.labels):
            raise ConfigError(f"cannot compare: {base.name} and {other.name} saved their test rows in a different "
                              "order, so the rows cannot be paired")


def mcnemar(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray) -> dict:
    """McNemar's exact test of equal accuracy: `a_only` rows only A gets right, `b_only` only B."""
    from scipy.stats import binomtest

    right_a = probs_a.argmax(axis=1) == labels
    right_b = probs_b.argmax(axis=1) == labels
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def compare_pair(a: Model, b: Model, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Point differences B - A of every headline metric, their paired bootstrap intervals, McNemar."""
    labels = a.labels
    names = compared_metrics(a.probs.shape[1])
    score_a, score_b = classification_metrics(labels, a.probs), classification_metrics(labels, b.probs)

    def differences(weights):
        resampled_a = resampled_metrics(labels, a.probs, weights)
        resampled_b = resampled_metrics(labels, b.probs, weights)
        return {name: resampled_b[name] - resampled_a[name] for name in names}

    intervals = bootstrap_intervals(differences, len(labels), n_resamples, seed, CONFIDENCE)
    rows = []
    for name in names:
        low, high = intervals[name]
        diff = score_b[name] - score_a[name]
        significant = bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
        better = None
        if significant:
            b_higher = low > 0
            better = "A" if b_higher == (name in LOWER_IS_BETTER) else "B"
        rows.append({"metric": name, "a": score_a[name], "b": score_b[name], "difference": diff,
                     "ci": [low, high], "significant": significant, "better": better})
    return {"a": a.name, "b": b.name, "n": len(labels), "resamples": n_resamples, "seed": seed,
            "confidence": CONFIDENCE, "metrics": rows, "mcnemar": mcnemar(labels, a.probs, b.probs)}
