"""Promote a checkpoint to `<run dir>/promoted/`: a loadable model, its evaluation and a model card.

Which checkpoint is chosen is medsweep/search/seeds.py's job (the best evaluation step, not the
last, of a seed-robust configuration). What a promoted folder holds, in either layout (merged
weights that `transformers.pipeline` loads; adapter + base reference for a 4-bit base), is
medsweep/release/layout.py's: this module decides what goes in and when it becomes `promoted`.

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
from filelock import FileLock

from medsweep import data
from medsweep.evaluation import subgroups
from medsweep.evaluation.metrics import name_per_class, scores_with_intervals
from medsweep.hf import quiet_libraries
from medsweep.release import layout
from medsweep.release.model_card import write_model_card
from medsweep.serving.inference import predict_proba
from medsweep.training.model import TRIAL_FILE, is_adapter_checkpoint, is_quantized, load_checkpoint, read_checkpoint_info
from medsweep.training.precision import base_reference

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
    return test["label"].to_numpy(), probs, splits.summary, subgroups.group_columns(test)


def write_model(checkpoint_dir: Path, staging: Path, info: dict, trust_remote_code: bool = False):
    """The checkpoint's model into the staging folder, in the layout its base allows; returns
    (model, tokenizer) for scoring the test split."""
    from transformers import AutoTokenizer

    model_cfg = info["config"]["model"]
    # load_checkpoint refuses a checkpoint folder that would run code of its own (unless the user allowed it).
    model = load_checkpoint(checkpoint_dir, merge=True, trust_remote_code=trust_remote_code)  # a 4-bit base stays unmerged
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=trust_remote_code)
    quantized = is_quantized(model_cfg)
    layout.write_model(staging, None if quantized else model, tokenizer,
                       adapter_source=checkpoint_dir if is_adapter_checkpoint(checkpoint_dir) else None,
                       base_reference=base_reference(model_cfg, info["label_names"]) if quantized else None)
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
    version_dir = run_dir / VERSIONS / current
    if (version_dir / layout.METRICS_FILE).exists():
        record_history(run_dir, {**history_entry(layout.read_metrics(version_dir)), "recovered": True})


def record_history(run_dir: Path, entry: dict) -> None:
    """Append-only: one JSON line per promotion, flushed to disk before promotion returns."""
    with open(run_dir / VERSIONS / HISTORY, "a") as history:
        history.write(json.dumps(entry, default=str) + "\n")
        history.flush()
        os.fsync(history.fileno())


def promotion_report(info: dict, labels: np.ndarray, probs: np.ndarray, data_summary: dict, groups: dict,
                     provenance: dict) -> dict:
    """metrics.json: the promoted step's validation metrics, the test metrics with CIs, the subgroup
    audit, where the data and the model came from, and how it was chosen."""
    config, label_names = info["config"], info["label_names"]
    bootstrap = {**DEFAULT_BOOTSTRAP, **(config.get("promote") or {})}
    # Without a seed re-run the record still says which seed trained this model.
    provenance = {"seed_robustness": {"seeds": [config["trainer"]["seed"]], "n": 1}, **provenance}
    report = {
        "metric": config["sweep"]["metric"],
        "mode": config["sweep"]["mode"],
        "validation": name_per_class(info["metrics"], label_names, prefix="val_"),
        **scores_with_intervals(labels, probs, label_names, "test_", bootstrap["bootstrap_resamples"],
                                bootstrap["bootstrap_seed"], CONFIDENCE),
        "label_names": label_names,
        "data_fingerprints": info["data_fingerprints"],
        "data_summary": data_summary,
        "base_model": config["model"]["name_or_path"],
        "finetune": config["model"]["finetune"],
        **provenance,
        "config": config,
    }
    if groups:
        report["subgroups"] = subgroups.subgroup_report(labels, probs, groups, bootstrap["bootstrap_resamples"],
                                                        bootstrap["bootstrap_seed"], CONFIDENCE)
    return report


def promote_checkpoint(checkpoint_dir: str | Path, run_dir: str | Path, provenance: dict | None = None,
                       trust_remote_code: bool = False) -> Path:
    """Write the checkpoint as a loadable model with its evaluation and card; swap it in as `promoted`.

    `provenance` (from search.seeds.Selection.provenance) says how the model was chosen; it is
    merged into metrics.json. `trust_remote_code` is the user's model.trust_remote_code, never the
    checkpoint's. A checkpoint whose weights do not match the sha256 in its trial.json is refused
    (ConfigError) before anything is written: the previous promoted model stays.
    """
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    quiet_libraries()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Two promotions into one run dir at once would race for the same version number.
    with FileLock(str(run_dir / f".{PROMOTED}.lock")):
        info = read_checkpoint_info(checkpoint_dir)
        reconcile_history(run_dir)
        target = next_version_dir(run_dir)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        previous = current_version(run_dir)

        model, tokenizer = write_model(checkpoint_dir, staging, info, trust_remote_code)
        labels, probs, data_summary, groups = evaluate_test_split(model, tokenizer, info["config"])
        report = {"version": target.name, "previous_version": previous,
                  "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  **promotion_report(info, labels, probs, data_summary, groups,
                                     {"checkpoint": str(checkpoint_dir), **(provenance or {})})}
        layout.write_record(staging, report, info["config"], labels, probs, info["label_names"])
        write_model_card(staging, report)

        os.replace(staging, target)
        link = swap_link(run_dir, target)
        record_history(run_dir, history_entry(report))
    return link
