"""Subgroup analysis: test accuracy and macro-F1 per group with bootstrap CIs (the promoted model's
audit), and the worst group's scores at every evaluation (a sweep objective).

`data.group_columns` names columns (sex, age band, site) read with the data and carried beside the
splits (data.GROUP_PREFIX), never given to the model. At promotion the test predictions are split by
each column's values and scored per group; the largest gap between two groups is flagged in
metrics.json (`subgroups`), the model card and the report.

Per-group macro-F1 averages over the classes that occur in that group's test rows: a class absent
from a small group would otherwise count as F1 0 and fake a gap. Groups with fewer than
MIN_GAP_GROUP_SIZE test rows are reported but left out of the gap (their numbers are mostly noise;
the CIs show how much).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from medsweep.data import GROUP_PREFIX
from medsweep.evaluation.metrics import PER_CLASS_F1, bootstrap_intervals, resampled_metrics

AUDIT_METRICS = ("accuracy", "f1_macro")
MIN_GAP_GROUP_SIZE = 10


def group_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{group column name: its value per row} for the group columns carried in a split frame."""
    return {c[len(GROUP_PREFIX):]: frame[c].astype(str).to_numpy() for c in frame.columns if c.startswith(GROUP_PREFIX)}


def group_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    preds = probs.argmax(axis=1)
    present = sorted(np.unique(labels).tolist())
    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1_macro": float(f1_score(labels, preds, labels=present, average="macro", zero_division=0))}


def group_intervals(labels: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int,
                    confidence: float) -> dict[str, list[float]]:
    """Percentile bootstrap CIs of group_scores, from the same resampled metrics as the test CIs."""
    present = np.unique(labels)

    def statistics(weights):
        scores = resampled_metrics(labels, probs, weights)
        return {"accuracy": scores["accuracy"],
                "f1_macro": np.mean([scores[f"{PER_CLASS_F1}{k}"] for k in present], axis=0)}

    return bootstrap_intervals(statistics, len(labels), n_resamples, seed, confidence)


def worst_group(labels: np.ndarray, probs: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """The lowest accuracy and macro-F1 over the groups of every group column: what a sweep reports
    per evaluation as val_worst_group_* (metrics.WORST_GROUP_METRIC_NAMES). Groups under
    MIN_GAP_GROUP_SIZE rows are ignored, as for the gap, unless no group is that large (a small
    validation split): then every group counts."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    scored = []
    for values in groups.values():
        for value in set(values.tolist()):
            rows = values == value
            scored.append((int(rows.sum()), group_scores(labels[rows], probs[rows])))
    eligible = [s for n, s in scored if n >= MIN_GAP_GROUP_SIZE] or [s for _, s in scored]
    return {f"worst_group_{metric}": min(s[metric] for s in eligible) for metric in AUDIT_METRICS}


def largest_gap(groups: dict[str, dict], column: str | None = None) -> dict | None:
    """The metric and pair of groups (of at least MIN_GAP_GROUP_SIZE rows) furthest apart."""
    eligible = {g: s for g, s in groups.items() if s["n"] >= MIN_GAP_GROUP_SIZE}
    if len(eligible) < 2:
        return None
    best = None
    for metric in AUDIT_METRICS:
        high = max(eligible, key=lambda g: eligible[g][metric])
        low = min(eligible, key=lambda g: eligible[g][metric])
        difference = eligible[high][metric] - eligible[low][metric]
        if best is None or difference > best["difference"]:
            (hl, hh), (ll, lh) = eligible[high]["ci"][metric], eligible[low]["ci"][metric]
            best = {"metric": metric, "groups": [high, low], "difference": float(difference),
                    # Overlapping 95% CIs: the gap may be test-set noise (a rough screen, not a test).
                    "cis_overlap": bool(ll <= hh and hl <= lh)}
    if column is not None:
        best = {"column": column, **best}
    return best


def subgroup_report(labels: np.ndarray, probs: np.ndarray, groups: dict[str, np.ndarray],
                    n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Per group column: every group's size, accuracy and macro-F1 with CIs, and its largest gap;
    overall: the largest gap over all columns."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    columns = {}
    for column, values in groups.items():
        per_group = {}
        for value in sorted(set(values)):
            rows = values == value
            scores = group_scores(labels[rows], probs[rows])
            per_group[value] = {"n": int(rows.sum()), **scores,
                                "ci": group_intervals(labels[rows], probs[rows], n_resamples, seed, confidence)}
        columns[column] = {"groups": per_group, "largest_gap": largest_gap(per_group)}
    gaps = [{"column": c, **entry["largest_gap"]} for c, entry in columns.items() if entry["largest_gap"]]
    return {
        "metrics": list(AUDIT_METRICS),
        "confidence": confidence,
        "method": "percentile bootstrap over each group's test rows",
        "resamples": n_resamples,
        "seed": seed,
        "min_group_size_for_gap": MIN_GAP_GROUP_SIZE,
        "columns": columns,
        "largest_gap": max(gaps, key=lambda g: g["difference"]) if gaps else None,
    }
