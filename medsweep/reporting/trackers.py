"""What every tracking backend shares: the Tracker interface and the sweep record's pieces (the
promoted model's summary and metadata, the validation examples), so W&B (wandb_tracking.py) and
MLflow (mlflow_tracking.py) log the same things and neither imports the other or the dispatcher
(tracking.py, which imports both).

Privacy: `examples` returns raw validation text; a backend calls it only when
`tracker.log_examples=true`.
"""

from __future__ import annotations

import math
from pathlib import Path

from medsweep.release import layout
from medsweep.rundir import RunDir

EXAMPLES_LOGGED = 20


class Tracker:
    """A tracking backend. Trial runs are opened, fed and closed from the driver by tracking.TrialRuns."""

    def check(self, config: dict) -> None:
        """Preflight, before any trial: raise ConfigError with one line if the backend cannot work."""

    def start(self, config: dict) -> None:
        """Before the first trial (MLflow opens the sweep's parent run here)."""

    def open_trial(self, config: dict, trial_id: str, resolved: dict, sampled: dict):
        raise NotImplementedError

    def log_evaluation(self, run, values: dict, step: int) -> None:
        raise NotImplementedError

    def close_trial(self, run, best: dict, summary: dict, status: str) -> None:
        """`best`: the best evaluation's TRIAL_HISTORY_KEYS values; `summary`: best_step, evaluations, status."""
        raise NotImplementedError

    def settle_lost(self, config: dict, trial_ids: set[str]) -> int:
        """After a resumed experiment: close the trial runs an earlier (killed) driver opened for trials
        the experiment does not hold (`trial_ids`: those it does); returns how many. A backend that
        cannot find earlier runs (W&B offline) closes none."""
        return 0

    def log_sweep(self, config: dict, run_dir: RunDir, report_dir: Path | None, splits=None) -> Path | None:
        """The sweep's record. `splits`: the driver's data.DataSplits, for the examples (loaded if None)."""
        raise NotImplementedError


def promoted_model(run_dir: RunDir) -> tuple[Path, dict] | None:
    """(the promoted version folder, its metrics.json), or None when nothing was promoted. The link
    is resolved once: a promotion in between cannot pair one version's metrics with another's files."""
    if not (run_dir.promoted / layout.METRICS_FILE).exists():
        return None
    folder = layout.resolve_folder(run_dir.promoted)
    return folder, layout.read_metrics(folder)


def _finite(value):
    return value if not (isinstance(value, float) and math.isnan(value)) else None


def sweep_summary(metrics: dict) -> dict:
    validation = {f"best_{k}": _finite(v) for k, v in metrics["validation"].items() if k.startswith("val_")}
    return {**validation, **{k: _finite(v) for k, v in metrics["test"].items()},
            "best_trial_id": metrics.get("trial_id"), "best_step": metrics["validation"].get("step"),
            "num_trials": metrics.get("num_trials"), "metric": metrics["metric"]}


def artifact_metadata(metrics: dict) -> dict:
    keys = ("metric", "mode", "validation", "test", "label_names", "data_fingerprints", "base_model", "finetune",
            "trial_id", "sweep")
    return {k: metrics[k] for k in keys if k in metrics}


def examples(config: dict, promoted: Path, limit: int = EXAMPLES_LOGGED, splits=None) -> tuple[list[str], list[list]]:
    """Validation texts with the promoted model's predictions (columns, rows): raw text, hence behind
    log_examples. Every backend logs these same rows. `splits`: the driver's data.DataSplits; loaded
    here only when called without them (a standalone log_sweep)."""
    from medsweep.serving.inference import load_promoted

    if splits is None:
        from medsweep import data

        splits = data.load_splits(config["data"])
    rows = splits.validation.head(limit)
    pairs = rows["text_pair"].tolist() if "text_pair" in rows.columns else None
    probs = load_promoted(promoted).predict(rows["text"].tolist(), pairs)
    names = splits.label_names
    columns = ["text", *(["text_pair"] if pairs is not None else []), "label", "predicted", "confidence"]
    table = []
    for i, (_, row) in enumerate(rows.iterrows()):
        texts = [row["text"], *([row["text_pair"]] if pairs is not None else [])]
        table.append([*texts, names[int(row["label"])], names[int(probs[i].argmax())], float(probs[i].max())])
    return columns, table
