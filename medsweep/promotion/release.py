"""Release a checkpoint as the run dir's promoted model: a loadable model, its evaluation and a card.

Which checkpoint is chosen is promotion/selection.py's job (the best evaluation step, not the last,
of a seed-robust configuration). What a promoted folder holds, in either layout (merged weights that
`transformers.pipeline` loads; adapter + base reference for a 4-bit base), is release/layout.py's;
versions, the `promoted` link and the history are release/store.py's. This module decides what goes
into a version: the model, the test split's scores, metrics.json and the card.

The test split is scored here and only here, once per promotion: test metrics, their bootstrap
confidence intervals and the confusion matrix.

Before it is scored, the staged model is calibrated on held-out rows (promote.calibrate,
promotion/calibration.py): the calibration split when data.calibration_fraction carved one from the
training rows, else the validation split. A temperature is baked into the written weights (the merged
weights, or the adapter layout's classifier head under adapter/), and the split-conformal threshold
at promote.coverage is written to decision.json (either layout). The test
split then reports calibration before/after (the "before" probabilities are the calibrated logits
times T: no second pass) and the sets' empirical coverage.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medsweep import data
from medsweep.config import ConfigError
from medsweep.evaluation import subgroups
from medsweep.evaluation.metrics import name_per_class, risk_coverage, scores_with_intervals
from medsweep.hf import quiet_libraries
from medsweep.plan import primary
from medsweep.promotion import calibration
from medsweep.promotion import decision
from medsweep.promotion.card import render
from medsweep.release import layout, store
from medsweep.serving.inference import predict_logits
from medsweep.training.model import is_adapter_checkpoint, is_quantized, load_checkpoint, read_checkpoint_info
from medsweep.training.precision import base_reference

# Used when a checkpoint's config predates these settings.
DEFAULT_BOOTSTRAP = {"bootstrap_resamples": 1000, "bootstrap_seed": 0}
DEFAULT_DECISION = {"calibrate": True, "coverage": 0.9}
CONFIDENCE = 0.95
# The coverage levels metrics.json, the card and the report always show (beside promote.coverage,
# the one decision.json serves), so that two models are compared at the same levels.
REPORTED_COVERAGES = (0.9, 0.95)


def configured_splits(config: dict, splits=None):
    """The splits this checkpoint is promoted with: the driver's (a refit's record describes every
    training row, not the search's subset), or read here when a checkpoint is promoted on its own."""
    return splits.as_configured(config["data"]) if splits is not None else data.load_splits(config["data"])


def split_logits(model, tokenizer, config: dict, frame) -> np.ndarray:
    pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
    return predict_logits(model, tokenizer, frame["text"].tolist(), pairs,
                          max_length=config["trainer"]["max_length"], batch_size=config["trainer"]["eval_batch_size"])


def evaluate_test_split(model, tokenizer, config: dict, splits=None) -> tuple[np.ndarray, np.ndarray, dict, dict, np.ndarray]:
    """Labels and predicted probabilities on the test split (the only time it is scored), the data
    summary, the test rows' group values (data.group_columns) for the subgroup audit, and the logits.
    `splits`: the driver's, already loaded (read here only when a checkpoint is promoted on its own)."""
    splits = configured_splits(config, splits)
    test = splits.test
    logits = split_logits(model, tokenizer, config, test)
    return test["label"].to_numpy(), calibration.softmax(logits), splits.summary, subgroups.group_columns(test), logits


def test_inputs(tokenizer, config: dict, splits) -> dict:
    """The test rows' lengths and unknown-token counts: the served inputs' drift reference
    (serving/monitoring.py measures each request with the same function)."""
    from medsweep.serving.monitoring import input_profile

    test = configured_splits(config, splits).test
    pairs = test["text_pair"].tolist() if "text_pair" in test.columns else None
    return input_profile(tokenizer, test["text"].tolist(), pairs, config["trainer"]["max_length"])


def calibrate(model, tokenizer, config: dict, held_out: tuple) -> dict:
    """Fit (and bake into `model`, before it is written) the temperature, and fit the conformal
    threshold, on `held_out` = (split name, rows): DataSplits.held_out_for_calibration. Returns what
    the report and decision.json need. `model` is merged, or a PeftModel on a 4-bit base whose
    classifier head is the adapter's own copy (modules_to_save): T is baked into that copy."""
    settings = {**DEFAULT_DECISION, **(config.get("promote") or {})}
    fitted_on, validation = held_out
    labels = validation["label"].to_numpy()
    logits = split_logits(model, tokenizer, config, validation)
    temperature, note = None, None
    if not settings["calibrate"]:
        note = "promote.calibrate=false: probabilities are the model's own"
    else:
        try:
            temperature = calibration.fit_temperature(logits, labels)
        except ConfigError as exc:
            # Refused, never baked. Promotion goes on uncalibrated (a sweep's best model still ships,
            # e.g. a tiny or failed model whose logits carry no information) and says so.
            note = f"temperature refused: {exc}; probabilities are the model's own"
            print(f"[medsweep] calibration {note}", flush=True)
    if temperature is not None:
        calibration.bake_temperature(model, temperature)
        # The layer found must really be the one that makes the logits: checked on a few rows.
        check = validation.iloc[:8]
        baked = split_logits(model, tokenizer, config, check)
        if not np.allclose(baked, logits[:len(check)] / temperature, rtol=1e-3, atol=1e-4):
            raise ConfigError("promote.calibrate: scaling the classifier layer did not scale the logits "
                              f"({type(model).__name__}); promote.calibrate=false promotes it uncalibrated")
        logits = logits / temperature
    fitted = {"rows": int(len(labels)), "coverage": float(settings["coverage"]), "temperature": temperature,
              "note": note, "fitted_on": fitted_on}
    probs = calibration.softmax(logits)
    fitted["threshold"] = calibration.lac_threshold(probs, labels, settings["coverage"])
    fitted["thresholds"] = {level: calibration.lac_threshold(probs, labels, level)
                            for level in sorted({*REPORTED_COVERAGES, float(settings["coverage"])})}
    fitted["validation"] = (probs, labels)  # calibrated: what the decision rule is fitted on
    return fitted


def calibration_report(fitted: dict, labels: np.ndarray, logits: np.ndarray, label_names: list[str],
                       config: dict, offsets: list[float] | None = None) -> dict:
    """metrics.json's `calibration`, `conformal` and `risk_coverage` sections, from the test split's
    (calibrated) logits; `offsets`: the decision rule's, when applied (the labels the curve scores)."""
    bootstrap = {**DEFAULT_BOOTSTRAP, **(config.get("promote") or {})}
    scores = lambda probs: calibration.probability_scores(labels, probs, bootstrap["bootstrap_resamples"],  # noqa: E731
                                                          bootstrap["bootstrap_seed"], CONFIDENCE)
    probs = calibration.softmax(logits)
    temperature = fitted["temperature"]
    section = {"applied": temperature is not None, "method": f"temperature scaling ({fitted['fitted_on']} NLL)",
               "temperature": temperature, "fitted_on": fitted["fitted_on"], "rows": fitted["rows"]}
    if fitted.get("note"):
        section["note"] = fitted["note"]
    if temperature is None:
        section["test"] = {"as_served": scores(probs)}
    else:
        section["test"] = {"before": scores(calibration.softmax(logits * temperature)), "after": scores(probs)}
    conformal = {"method": "lac", "coverage": fitted["coverage"], "threshold": fitted["threshold"],
                 "calibration_rows": fitted["rows"], "fitted_on": fitted["fitted_on"],
                 "test": calibration.conformal_report(labels, probs, fitted["threshold"], label_names, CONFIDENCE),
                 "levels": [{"coverage": level, "threshold": threshold,
                             "test": calibration.conformal_report(labels, probs, threshold, label_names, CONFIDENCE)}
                            for level, threshold in fitted["thresholds"].items()]}
    served = None if offsets is None else decision.decide(np.log(np.clip(probs, 1e-12, 1.0)), offsets)
    return {"calibration": section, "conformal": conformal,
            "risk_coverage": {**risk_coverage(labels, probs, served),
                              "labels": "decision rule" if offsets is not None else "argmax"}}


def stage_model(checkpoint_dir: Path, staging: Path, info: dict, trust_remote_code: bool = False, prepare=None):
    """The checkpoint's model into the staging folder, in the layout its base allows; returns
    (model, tokenizer) for scoring the test split. `prepare(model, tokenizer)` runs before anything
    is written (calibration bakes its temperature there) and returns whether it changed the weights:
    in the adapter layout the adapter is then written from the model (its scaled classifier head)
    rather than copied from the checkpoint."""
    from transformers import AutoTokenizer

    model_cfg = info["config"]["model"]
    # load_checkpoint refuses a checkpoint folder that would run code of its own (unless the user allowed it).
    model = load_checkpoint(checkpoint_dir, merge=True, trust_remote_code=trust_remote_code)  # a 4-bit base stays unmerged
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=trust_remote_code)
    quantized = is_quantized(model_cfg)
    changed = prepare(model, tokenizer) if prepare is not None else False
    layout.write_model(staging, None if quantized else model, tokenizer,
                       adapter_source=checkpoint_dir if is_adapter_checkpoint(checkpoint_dir) else None,
                       adapter_model=model if quantized and changed else None,
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
                       trust_remote_code: bool = False, splits=None, gate=None) -> Path:
    """Write the checkpoint as a loadable model with its evaluation and card; swap it in as `promoted`.

    `provenance` (from promotion.selection.Selection.provenance) says how the model was chosen; it is
    merged into metrics.json. `trust_remote_code` is the user's model.trust_remote_code, never the
    checkpoint's. `splits`: the driver's (the test split is read from them). A checkpoint whose
    weights do not match the sha256 in its trial.json is refused (ConfigError) before anything is
    written: the previous promoted model stays. `gate(labels, probs, report)` (promotion/gate.py) sees
    the scored candidate before anything is published: its verdict goes into metrics.json, or it
    raises and the staged version is discarded (the link, the history and the old versions untouched).
    """
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    quiet_libraries()
    with store.new_version(run_dir, history_entry) as version:
        info = read_checkpoint_info(checkpoint_dir)
        config = info["config"]
        fitted, given = {}, splits

        def prepare(model, tokenizer):
            # Here, once the checkpoint folder has passed load_checkpoint's checks: a hostile folder is
            # refused before its config is trusted for anything, the data included.
            nonlocal splits
            splits = configured_splits(config, given)
            fitted.update(calibrate(model, tokenizer, config, splits.held_out_for_calibration))
            return fitted["temperature"] is not None

        model, tokenizer = stage_model(checkpoint_dir, version.folder, info, trust_remote_code, prepare)
        if fitted["temperature"] is not None and is_adapter_checkpoint(checkpoint_dir) and not is_quantized(config["model"]):
            # The merged weights are scaled; the LoRA copy kept under adapter/ is the checkpoint's, as it was.
            fitted["note"] = (f"adapter/ (kept for PEFT users) holds the unscaled classifier head: divide its logits "
                              f"by T = {fitted['temperature']:.6g} for the calibrated probabilities")
        rule = decision.choose_rule(*fitted.pop("validation"), primary(config).metric,
                                    (config.get("promote") or {}).get("target_sensitivity"), info["label_names"])
        layout.write_decision(version.folder, {"conformal": {
            "method": "lac", "coverage": fitted["coverage"], "threshold": fitted["threshold"],
            "calibration_rows": fitted["rows"]}, **({"offsets": rule["offsets"]} if rule["applied"] else {})})
        labels, probs, data_summary, groups, logits = evaluate_test_split(model, tokenizer, config, splits)
        report = {"version": version.name, "previous_version": version.previous,
                  "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  **promotion_report(info, labels, probs, data_summary, groups,
                                     {"checkpoint": str(checkpoint_dir), **(provenance or {})}),
                  **calibration_report(fitted, labels, logits, info["label_names"], config, rule.get("offsets")),
                  "decision_rule": {**rule, "test": decision.test_effect(calibration.softmax(logits), labels,
                                                                         rule.get("offsets"))}}
        if gate is not None:
            try:
                report["gate"] = gate(labels, probs, report)
            except BaseException:
                version.discard()
                raise
        layout.write_record(version.folder, report, info["config"], labels, probs, info["label_names"],
                            inputs=test_inputs(tokenizer, config, splits))
        write_model_card(version.folder, report)
        return version.publish(history_entry(report))
