"""The promotion gate (`promote.gate=<earlier run dir>`): a retrain is promoted only if it is not
significantly worse than the model it would replace.

The candidate's test predictions (scored once, in promotion/release.py) and the earlier run's
promoted test predictions (its test_predictions.npz) are compared row by row with medsweep.compare's
paired comparison (evaluation/paired.py): a paired percentile bootstrap of the difference
candidate - earlier on the sweep's primary metric (its test counterpart: val_f1_macro -> f1_macro),
promote.bootstrap_resamples resamples seeded with promote.bootstrap_seed, 95% interval. The
candidate is blocked when that interval lies wholly on the worse side of 0: a two-sided test at
alpha = 0.05 (one-sided 0.025). "Not significantly worse" rather than "significantly better", so that
a retrain that adds a few feedback rows and scores the same is still promoted. McNemar's exact test
of accuracy is recorded beside it (its p-value), as compare.md shows it; it does not decide.

The same test split is required (fingerprint, labels, row order): checked before any trial from the
plan's splits, and again at promotion from the saved predictions. A block raises `Blocked` before the
store swaps the `promoted` link (nothing of the candidate is published; the earlier run dir is only
read); the verdict, either way, is written to the run dir's gate.json and, when promoted, into
metrics.json and the model card.
"""

from __future__ import annotations

import json

import numpy as np

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import LOWER_IS_BETTER
from medsweep.evaluation.paired import CONFIDENCE, Model, check_same_test_split, compare_pair, compared_metrics
from medsweep.plan import primary
from medsweep.release import layout
from medsweep.rundir import PROMOTED, RunDir, atomic_write, promoted_folder

ALPHA = round(1 - CONFIDENCE, 10)  # 0.05: the 95% interval of compare's paired bootstrap
EXIT_CODE = 3  # `python -m medsweep.run` ends with it when the gate blocks (a verdict, not a crash)


class Blocked(Exception):
    """The candidate is significantly worse than the earlier promoted model: nothing was promoted."""

    def __init__(self, message: str, verdict: dict):
        super().__init__(message)
        self.verdict = verdict


def test_metric(config: dict, num_classes: int) -> str:
    """The test metric the gate compares on: the primary objective without its `val_` prefix."""
    metric = primary(config).metric
    name = metric.removeprefix("val_")
    if name not in compared_metrics(num_classes):
        raise ConfigError(f"promote.gate compares test {list(compared_metrics(num_classes))}; the sweep's metric "
                          f"{metric!r} has no test counterpart there: gate on one of those, or drop promote.gate")
    return name


def earlier_model(path: str) -> Model:
    """The earlier run's promoted model, its metrics and saved test predictions; one-line ConfigError."""
    try:
        folder = layout.resolve_folder(promoted_folder(path))
    except ConfigError:
        raise ConfigError(f"promote.gate={path}: no such run dir or promoted folder") from None
    if not (folder / layout.METRICS_FILE).exists():
        raise ConfigError(f"promote.gate={path}: no promoted model there (no {PROMOTED}/{layout.METRICS_FILE}); "
                          "gate on a run that promoted one")
    saved = layout.read_test_predictions(folder)
    if saved is None:
        raise ConfigError(f"promote.gate={path}: its promoted model has no saved test predictions "
                          f"({layout.PREDICTIONS_FILE}) to compare with")
    return Model(str(path), folder, layout.read_metrics(folder), np.asarray(saved["labels"]),
                 np.asarray(saved["probs"], dtype=np.float64), saved["label_names"])


def check(plan) -> None:
    """Before any trial: the gate names a promoted model of the same task on the same test split."""
    path = plan.config["promote"].get("gate")
    if not path:
        return
    if not plan.config["promote"]["enabled"]:
        raise ConfigError("promote.gate decides whether the new model is promoted: it needs promote.enabled=true")
    splits = plan.splits
    test_metric(plan.config, len(splits.label_names))
    earlier = earlier_model(path)
    if earlier.label_names != list(splits.label_names):
        raise ConfigError(f"promote.gate={path}: its model has the labels {earlier.label_names}, this task "
                          f"{list(splits.label_names)}; gate on a model of the same task")
    test_print = (earlier.metrics.get("data_fingerprints") or {}).get("test")
    if test_print != splits.fingerprints["test"]:
        raise ConfigError(f"promote.gate={path}: its model was tested on another test split (fingerprint "
                          f"{test_print}, this run's {splits.fingerprints['test']}); a retrain must keep the data's "
                          "test rows (data.feedback adds to training only)")


def verdict(config: dict, labels: np.ndarray, probs: np.ndarray, report: dict) -> dict:
    """Compare the candidate (this promotion's test predictions) with the earlier promoted model."""
    path = config["promote"]["gate"]
    earlier = earlier_model(path)
    candidate = Model("candidate", None, {"data_fingerprints": report["data_fingerprints"]}, np.asarray(labels),
                      np.asarray(probs, dtype=np.float64), list(report["label_names"]))
    check_same_test_split([earlier, candidate])
    settings = config["promote"]
    result = compare_pair(earlier, candidate, settings["bootstrap_resamples"], settings["bootstrap_seed"])
    metric = test_metric(config, probs.shape[1])
    row = next(r for r in result["metrics"] if r["metric"] == metric)
    worse = bool(row["significant"] and row["better"] == "A")
    return {
        "against": str(path), "against_version": earlier.folder.name, "metric": f"test_{metric}",
        "lower_is_better": metric in LOWER_IS_BETTER, "earlier": row["a"], "candidate": row["b"],
        "difference": row["difference"], "ci": row["ci"], "confidence": CONFIDENCE, "alpha": ALPHA,
        "test": "paired percentile bootstrap of candidate - earlier on the same test rows (evaluation/paired.py)",
        "resamples": result["resamples"], "seed": result["seed"], "test_rows": result["n"],
        "mcnemar_accuracy_p_value": result["mcnemar"]["p_value"],
        "significantly_worse": worse, "promoted": not worse,
    }


def describe(v: dict) -> str:
    """The verdict in one line (printed, and the card's)."""
    low, high = v["ci"]
    outcome = "blocked: significantly worse" if v["significantly_worse"] else "passed: not significantly worse"
    return (f"promote.gate {outcome} than {v['against']} ({v['against_version']}) on {v['metric']}: "
            f"{v['candidate']:.4f} vs {v['earlier']:.4f}, difference {v['difference']:+.4f}, "
            f"{v['confidence']:.0%} paired bootstrap CI [{low:+.4f}, {high:+.4f}] (alpha {v['alpha']:g}); "
            f"McNemar p = {v['mcnemar_accuracy_p_value']:.3g}")


def for_plan(plan):
    """The check promotion runs on the candidate before the link is swapped, or None without a gate:
    returns the verdict (it goes into metrics.json) or raises Blocked; writes gate.json either way."""
    config = plan.config
    if not config["promote"].get("gate"):
        return None
    run_dir: RunDir = plan.run_dir

    def gate(labels, probs, report) -> dict:
        result = verdict(config, labels, probs, report)
        atomic_write(run_dir.gate, json.dumps({**result, "candidate_report": {
            "test": report["test"], "trial_id": report.get("trial_id"),
            "feedback": (report.get("data_summary") or {}).get("feedback")}}, indent=2, default=str))
        line = describe(result)
        if result["significantly_worse"]:
            raise Blocked(f"{line}; nothing promoted, {result['against']} keeps serving (details: {run_dir.gate})",
                          result)
        print(f"[medsweep] {line}", flush=True)
        return result

    return gate

