"""Release a checkpoint as the run dir's promoted model: a loadable model, its evaluation and a card.

Which checkpoint is chosen is promotion/selection.py's job (the best evaluation step, not the last,
of a seed-robust configuration). What a promoted folder holds, in either layout (merged weights that
`transformers.pipeline` loads; adapter + base reference for a 4-bit base), is release/layout.py's;
versions, the `promoted` link and the history are release/store.py's. This module decides what goes
into a version: the model, the test split's scores, metrics.json and the card.

The test split is scored here and only here, once per promotion: test metrics, their bootstrap
confidence intervals and the confusion matrix.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medsweep import data
from medsweep.evaluation import subgroups
from medsweep.evaluation.metrics import name_per_class, scores_with_intervals
from medsweep.hf import quiet_libraries
from medsweep.plan import primary
from medsweep.promotion.card import render
from medsweep.release import layout, store
from medsweep.serving.inference import predict_proba
from medsweep.training.model import is_adapter_checkpoint, is_quantized, load_checkpoint, read_checkpoint_info
from medsweep.training.precision import base_reference

# Used when a checkpoint's config predates these settings.
DEFAULT_BOOTSTRAP = {"bootstrap_resamples": 1000, "bootstrap_seed": 0}
CONFIDENCE = 0.95


def evaluate_test_split(model, tokenizer, config: dict, splits=None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Labels and predicted probabilities on the test split (the only time it is scored), the data
    summary, and the test rows' group values (data.group_columns) for the subgroup audit. `splits`:
    the driver's, already loaded (read here only when a checkpoint is promoted on its own)."""
    # A refit trained on every training row: its record describes those rows, not the search's subset.
    splits = splits.as_configured(config["data"]) if splits is not None else data.load_splits(config["data"])
    test = splits.test
    pairs = test["text_pair"].tolist() if "text_pair" in test.columns else None
    probs = predict_proba(model, tokenizer, test["text"].tolist(), pairs,
                          max_length=config["trainer"]["max_length"], batch_size=config["trainer"]["eval_batch_size"])
    return test["label"].to_numpy(), probs, splits.summary, subgroups.group_columns(test)


def stage_model(checkpoint_dir: Path, staging: Path, info: dict, trust_remote_code: bool = False):
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
                       base_reference=base_reference(model_cfg, info["label_names"]) if quantized else None,
                       trial_file_from=checkpoint_dir)
    return model, tokenizer


def history_entry(report: dict) -> dict:
    metric = report["metric"]
    return {
        "version": report["version"], "previous_version": report["previous_version"], "promoted_at": report["promoted_at"],
        "checkpoint": report.get("checkpoint"), "trial_id": report.get("trial_id"),
        "metric": metric, "validation_value": report["validation"].get(metric),
        "test_f1_macro": report["test"]["test_f1_macro"], "test_accuracy": report["test"]["test_accuracy"],
        "seeds": report["seed_robustness"].get("seeds"), "data_fingerprints": report["data_fingerprints"],
    }


def promotion_report(info: dict, labels: np.ndarray, probs: np.ndarray, data_summary: dict, groups: dict,
                     provenance: dict) -> dict:
    """metrics.json: the promoted step's validation metrics, the test metrics with CIs, the subgroup
    audit, where the data and the model came from, and how it was chosen."""
    config, label_names = info["config"], info["label_names"]
    bootstrap = {**DEFAULT_BOOTSTRAP, **(config.get("promote") or {})}
    # Without a seed re-run the record still says which seed trained this model.
    provenance = {"seed_robustness": {"seeds": [config["trainer"]["seed"]], "n": 1}, **provenance}
    objective = primary(config)
    report = {
        "metric": objective.metric,
        "mode": objective.mode,
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


def write_model_card(folder: Path, report: dict) -> Path:
    """The card rendered from metrics.json (promotion/card.py), written by the layout."""
    return layout.write_card(folder, render(report))


def promote_checkpoint(checkpoint_dir: str | Path, run_dir: str | Path, provenance: dict | None = None,
                       trust_remote_code: bool = False, splits=None) -> Path:
    """Write the checkpoint as a loadable model with its evaluation and card; swap it in as `promoted`.

    `provenance` (from promotion.selection.Selection.provenance) says how the model was chosen; it is
    merged into metrics.json. `trust_remote_code` is the user's model.trust_remote_code, never the
    checkpoint's. `splits`: the driver's (the test split is read from them). A checkpoint whose
    weights do not match the sha256 in its trial.json is refused (ConfigError) before anything is
    written: the previous promoted model stays.
    """
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    quiet_libraries()
    with store.new_version(run_dir, history_entry) as version:
        info = read_checkpoint_info(checkpoint_dir)
        model, tokenizer = stage_model(checkpoint_dir, version.folder, info, trust_remote_code)
        labels, probs, data_summary, groups = evaluate_test_split(model, tokenizer, info["config"], splits)
        report = {"version": version.name, "previous_version": version.previous,
                  "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  **promotion_report(info, labels, probs, data_summary, groups,
                                     {"checkpoint": str(checkpoint_dir), **(provenance or {})})}
        layout.write_record(version.folder, report, info["config"], labels, probs, info["label_names"])
        write_model_card(version.folder, report)
        return version.publish(history_entry(report))
