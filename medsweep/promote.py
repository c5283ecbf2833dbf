"""Promote a checkpoint to `<run dir>/promoted/`: a loadable model, its evaluation and a model card.

Which checkpoint is chosen is medsweep/selection.py's job (the best evaluation step, not the last,
of a seed-robust configuration). The promoted folder is a plain `save_pretrained` model (LoRA merged
in; the adapter kept under adapter/) that `transformers.pipeline("text-classification", model=...)`
loads, plus metrics.json, medsweep_config.yaml and README.md (the model card). A LoRA adapter on a
4-bit (QLoRA) base is not merged: the folder holds adapter/ and base_model.json, and
`medsweep.predict.load_promoted` loads either layout.

The test split is scored here and only here, once per promotion: test metrics, their bootstrap
confidence intervals and the confusion matrix.

Promotion is atomic and versioned: the new version is written in full under promoted-versions/vNNN,
then the `promoted` symlink is swapped in one rename, then the promotion is appended to
promoted-versions/history.jsonl. A crash at any point leaves the previous promoted model in place
and loadable; no version folder is ever overwritten or deleted, and version numbers are never
reused once a version was completed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from filelock import FileLock
from sklearn.metrics import confusion_matrix
from transformers import AutoTokenizer

from medsweep import audit, data
from medsweep.metrics import bootstrap_ci, classification_metrics, name_per_class
from medsweep.model import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    TRIAL_FILE,
    is_adapter_checkpoint,
    is_quantized,
    load_checkpoint,
    read_checkpoint_info,
    write_base_reference,
)
from medsweep.model_card import write_model_card
from medsweep.predict import predict_proba
from medsweep.trial import quiet_libraries

PROMOTED = "promoted"
VERSIONS = "promoted-versions"
HISTORY = "history.jsonl"
# Used when a checkpoint's config predates these settings.
DEFAULT_BOOTSTRAP = {"bootstrap_resamples": 1000, "bootstrap_seed": 0}
CONFIDENCE = 0.95


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / VERSIONS / HISTORY
    if not path.exists():
        return []
    # A line cut short by a crash mid-append is skipped, not fatal.
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
TEST_PREDICTIONS = "test_predictions.npz"


def next_version_dir(run_dir: Path) -> Path:
    """vNNN after every completed version folder and every version the history names, so a number
    is never reused (a crashed attempt's `.partial` folder does not count and is cleared)."""
    versions = run_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in versions.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name))]
    numbers += [int(m.group(1)) for e in read_history(run_dir) if (m := re.fullmatch(r"v(\d+)", str(e.get("version"))))]
    return versions / f"v{max(numbers, default=0) + 1:03d}"


def current_version(run_dir: Path) -> str | None:
    link = run_dir / PROMOTED
    return Path(os.readlink(link)).name if link.is_symlink() else None


def evaluate_test_split(model, tokenizer, config: dict) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Labels and predicted probabilities on the test split (the only time it is scored), the data
    summary, and the test rows' group values (data.group_columns) for the subgroup audit."""
    splits = data.load_splits(config["data"])
    test = splits.test
    pairs = test["text_pair"].tolist() if "text_pair" in test.columns else None
    probs = predict_proba(model, tokenizer, test["text"].tolist(), pairs,
                          max_length=config["trainer"]["max_length"], batch_size=config["trainer"]["eval_batch_size"])
    return test["label"].to_numpy(), probs, splits.summary, audit.group_columns(test)


def test_report(labels: np.ndarray, probs: np.ndarray, label_names: list[str], promote_cfg: dict) -> dict:
    """Test metrics, their percentile-bootstrap CIs and the confusion matrix, keyed for people."""
    settings = {**DEFAULT_BOOTSTRAP, **(promote_cfg or {})}
    scores = {f"test_{k}": v for k, v in classification_metrics(labels, probs).items()}
    intervals = bootstrap_ci(labels, probs, n_resamples=settings["bootstrap_resamples"],
                             seed=settings["bootstrap_seed"], confidence=CONFIDENCE)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(len(label_names))))
    return {
        "test": name_per_class(scores, label_names, prefix="test_"),
        "test_ci": {
            "confidence": CONFIDENCE,
            "method": "percentile bootstrap over test rows",
            "resamples": settings["bootstrap_resamples"],
            "seed": settings["bootstrap_seed"],
            "intervals": name_per_class({f"test_{k}": v for k, v in intervals.items()}, label_names, prefix="test_"),
        },
        "confusion_matrix": {"rows": "true label", "columns": "predicted label", "labels": label_names,
                             "matrix": matrix.tolist()},
    }


def write_model(checkpoint_dir: Path, staging: Path, info: dict):
    config = info["config"]
    model = load_checkpoint(checkpoint_dir, merge=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    tokenizer.save_pretrained(staging)
    if is_quantized(config["model"]):
        # A 4-bit base stays unmerged: the promoted model is adapter/ plus the base it goes on.
        write_base_reference(staging, config["model"], info["label_names"])
    else:
        model.save_pretrained(staging)
    if is_adapter_checkpoint(checkpoint_dir):
        (staging / ADAPTER_DIR).mkdir()
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copy2(checkpoint_dir / name, staging / ADAPTER_DIR / name)
    shutil.copy2(checkpoint_dir / TRIAL_FILE, staging / TRIAL_FILE)
    return model, tokenizer


def swap_link(run_dir: Path, target: Path) -> Path:
    link = run_dir / PROMOTED
    tmp_link = run_dir / f".{PROMOTED}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(target.relative_to(run_dir))
    os.replace(tmp_link, link)  # atomic on POSIX: readers see the old or the new model, never neither
    return link


def history_entry(report: dict) -> dict:
    metric = report["metric"]
    return {
        "version": report["version"], "previous_version": report["previous_version"], "promoted_at": report["promoted_at"],
        "checkpoint": report.get("checkpoint"), "trial_id": report.get("trial_id"),
        "metric": metric, "validation_value": report["validation"].get(metric),
        "test_f1_macro": report["test"]["test_f1_macro"], "test_accuracy": report["test"]["test_accuracy"],
        "seeds": report["seed_robustness"].get("seeds"), "data_fingerprints": report["data_fingerprints"],
    }


def reconcile_history(run_dir: Path) -> None:
    """If a crash came between the link swap and the history append, the promoted version has no
    history line: add it (from its own metrics.json) before anything else is recorded."""
    current = current_version(run_dir)
    if current is None or any(e.get("version") == current for e in read_history(run_dir)):
        return
    metrics_file = run_dir / VERSIONS / current / "metrics.json"
    if metrics_file.exists():
        record_history(run_dir, {**history_entry(json.loads(metrics_file.read_text())), "recovered": True})


def record_history(run_dir: Path, entry: dict) -> None:
    """Append-only: one JSON line per promotion, flushed to disk before promotion returns."""
    with open(run_dir / VERSIONS / HISTORY, "a") as history:
        history.write(json.dumps(entry, default=str) + "\n")
        history.flush()
        os.fsync(history.fileno())


def promote_checkpoint(checkpoint_dir: str | Path, run_dir: str | Path, provenance: dict | None = None) -> Path:
    """Write the checkpoint as a loadable model with its evaluation and card; swap it in as `promoted`.

    `provenance` (from selection.Selection.provenance) says how the model was chosen; it is merged
    into metrics.json.
    """
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    quiet_libraries()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Two promotions into one run dir at once would race for the same version number.
    with FileLock(str(run_dir / f".{PROMOTED}.lock")):
        info = read_checkpoint_info(checkpoint_dir)
        config = info["config"]
        label_names = info["label_names"]
        reconcile_history(run_dir)
        target = next_version_dir(run_dir)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        previous = current_version(run_dir)

        model, tokenizer = write_model(checkpoint_dir, staging, info)
        labels, probs, data_summary, groups = evaluate_test_split(model, tokenizer, config)
        # Numbers only (never the texts), for the report's confusion matrix, ROC and calibration plots.
        np.savez_compressed(staging / TEST_PREDICTIONS, labels=labels, probs=probs, label_names=np.array(label_names))
        provenance = {"checkpoint": str(checkpoint_dir), **(provenance or {})}
        # Without a seed re-run the record still says which seed trained this model.
        provenance.setdefault("seed_robustness", {"seeds": [config["trainer"]["seed"]], "n": 1})
        report = {
            "version": target.name,
            "previous_version": previous,
            "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metric": config["sweep"]["metric"],
            "mode": config["sweep"]["mode"],
            "validation": name_per_class(info["metrics"], label_names, prefix="val_"),
            **test_report(labels, probs, label_names, config.get("promote")),
            "label_names": label_names,
            "data_fingerprints": info["data_fingerprints"],
            "data_summary": data_summary,
            "base_model": config["model"]["name_or_path"],
            "finetune": config["model"]["finetune"],
            **provenance,
            "config": config,
        }
        if groups:
            settings = {**DEFAULT_BOOTSTRAP, **(config.get("promote") or {})}
            report["subgroups"] = audit.subgroup_report(labels, probs, groups, settings["bootstrap_resamples"],
                                                        settings["bootstrap_seed"], CONFIDENCE)
        (staging / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
        (staging / "medsweep_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        write_model_card(staging, report)

        os.replace(staging, target)
        link = swap_link(run_dir, target)
        record_history(run_dir, history_entry(report))
    return link
