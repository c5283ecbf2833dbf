"""The model card of a promoted model (`promoted/README.md`, written by release/layout.py), Hugging Face style.

YAML front matter (base_model, tags, metrics, model-index) written with huggingface_hub's
ModelCardData, so the Hub reads it as it reads any model card; the body is rendered from the
promotion's metrics.json report and nothing else, so the card cannot disagree with it. One function
per section, in the order the card reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from medsweep.markdown import interval, number, table

# Built-in models that have a Hub id (the tiny random model is built locally and has none).
HUB_IDS = {"builtin:minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
# Rows of the metrics table: (key without split prefix, what people call it).
HEADLINE = [
    ("f1_macro", "macro F1"), ("f1_weighted", "weighted F1"), ("accuracy", "accuracy"),
    ("precision_macro", "macro precision"), ("recall_macro", "macro recall"), ("auroc", "AUROC"),
    ("auprc", "AUPRC (average precision)"), ("ece", "expected calibration error (15 bins; lower is better)"),
    ("sensitivity", "sensitivity (recall of the positive class)"), ("specificity", "specificity"),
]
# Hugging Face metric ids for the front matter.
HF_METRIC_IDS = {"f1_macro": "f1", "accuracy": "accuracy", "auroc": "roc_auc", "precision_macro": "precision",
                 "recall_macro": "recall", "auprc": "average_precision"}


def front_matter(report: dict) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    config = report["config"]
    base = report["base_model"]
    test = report["test"]
    dataset = config["data"]["name"]
    eval_results = [
        EvalResult(task_type="text-classification", dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                   metric_type=HF_METRIC_IDS[key], metric_name=name, metric_value=float(test[f"test_{key}"]))
        for key, name in HEADLINE if key in HF_METRIC_IDS and isinstance(test.get(f"test_{key}"), float)
        and not math.isnan(test[f"test_{key}"])
    ]
    card = ModelCardData(
        base_model=HUB_IDS.get(base, base),
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["medsweep", "text-classification", "medical", "clinical-decision-support",
              "lora" if report["finetune"] == "lora" else "full-fine-tune"],
        metrics=sorted({HF_METRIC_IDS[k] for k, _ in HEADLINE if k in HF_METRIC_IDS}),
        model_name=f"medsweep-{dataset}-{report['version']}",
        eval_results=eval_results or None,
    )
    return f"---\n{card.to_yaml()}\n---\n"


def introduction(report: dict) -> list[str]:
    labels = report["label_names"]
    return [
        f"# medsweep model {report['version']}: {report['config']['data']['name']} text classifier", "",
        f"A fine-tuned `{report['base_model']}` sequence classifier over {len(labels)} labels "
        f"({', '.join(labels)}), promoted by medsweep on {report['promoted_at']} "
        f"(version {report['version']}, replacing {report['previous_version'] or 'nothing'}).", "",
        "## Intended use", "",
        "**Decision support only.** The model suggests a label and class probabilities for a text so that a qualified "
        "person can review, prioritise or double-check it. It must not make or replace a diagnosis, triage or treatment "
        "decision, must not act without a human in the loop, and must not be used on populations, text types or "
        "labels other than those described below without a new evaluation.", "",
    ]


def model_section(report: dict) -> list[str]:
    model, trainer, data_cfg = (report["config"][k] for k in ("model", "trainer", "data"))
    validation = report["validation"]
    base = report["base_model"]
    lora = model["lora"]
    finetune = (f"LoRA (r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']:.3g}, modules "
                f"{lora['target_modules']}), merged into the weights" if model["finetune"] == "lora" else "full fine-tune")
    inputs = (f"; text pairs (`{data_cfg['text_column']}`, `{data_cfg['text_pair_column']}`)" if data_cfg.get("text_pair_column")
              else f"; text column `{data_cfg['text_column']}`")
    return [
        "## Model", "",
        f"- Base model: `{base}`" + (f" (Hub: `{HUB_IDS[base]}`)" if base in HUB_IDS else ""),
        f"- Fine-tuning: {finetune}",
        f"- Training: learning rate {trainer['learning_rate']:.3g}, {trainer['epochs']} epoch(s), batch size "
        f"{trainer['batch_size']}, warm-up ratio {trainer['warmup_ratio']:.3g}, weight decay {trainer['weight_decay']:.3g}, "
        f"seed {trainer['seed']}",
        f"- Inputs are truncated to {trainer['max_length']} tokens" + inputs,
        f"- Promoted checkpoint: trial `{report.get('trial_id')}`, evaluation {validation.get('evaluation')} "
        f"(step {validation.get('step')})",
        *training_rows_line(report), "",
    ]


def training_rows_line(report: dict) -> list[str]:
    """Which rows and how many optimizer steps trained the promoted weights (metrics.json `training`)."""
    training = report.get("training")
    if not training:
        return []
    line = (f"- Trained on {training['rows']} training rows (train fingerprint `{training['train_fingerprint']}`) "
            f"for {training.get('steps')} optimizer steps ({training.get('epoch') or 0:g} epochs)")
    if training.get("refit"):
        line += (f"; refit on all training rows after a search on {training['search_rows']} of them "
                 f"(fingerprint `{training['search_train_fingerprint']}`)")
    elif training["rows"] < training.get("all_training_rows", training["rows"]):
        line += f", a subset of the {training['all_training_rows']} training rows"
    return [line]


def range_section(report: dict) -> list[str]:
    """Where the search space looked too small (medsweep/search/edges.py): the best trials at a range's edge."""
    hints = report.get("range_hints") or []
    if not hints:
        return []
    return ["## Search range", "", "The best trials sat at the edge of what the sweep searched; a wider search may do better:", "",
            *(f"- {hint['message']}" for hint in hints), ""]


def data_section(report: dict) -> list[str]:
    data_cfg = report["config"]["data"]
    summary = report.get("data_summary") or {}
    lines = ["## Data", "", f"- Source: `{data_cfg['path']}` ({data_cfg['format']}), label column `{data_cfg['label_column']}`"]
    if summary:
        caps = (f" (train capped at {data_cfg['max_train_samples']}, validation at {data_cfg['max_eval_samples']})"
                if data_cfg.get("max_train_samples") or data_cfg.get("max_eval_samples") else "")
        lines += [
            f"- Cleaning: {summary.get('rows_read')} rows read; {summary.get('empty_texts_dropped')} empty texts dropped; "
            f"{summary.get('conflicting_texts_dropped')} texts carrying conflicting labels dropped "
            f"({summary.get('conflicting_rows_dropped')} rows); {summary.get('duplicates_removed')} exact duplicates removed; "
            f"{summary.get('rows_kept')} rows kept",
            f"- Split (stratified, seed {data_cfg['seed']}; duplicates removed before splitting, so no text is in two splits): "
            + ", ".join(f"{k} {v}" for k, v in summary.get("split_sizes", {}).items()) + caps,
            "",
        ]
        if "deidentified" in summary:
            masked = summary["deidentified"]
            lines += ["- De-identification (rule set, medsweep/data/deid.py) masked identifiers in "
                      f"{masked['rows_changed']} row(s) before training: "
                      + ", ".join(f"{kind} {n}" for kind, n in masked["masked"].items()), ""]
        counts = summary.get("class_counts", {})
        if counts:
            lines += table(["label", *counts], [[name, *(counts[s].get(name, 0) for s in counts)]
                                                for name in report["label_names"]]) + [""]
    lines += ["- Split fingerprints (sha256 of the rows): "
              + ", ".join(f"{k} `{v}`" for k, v in report["data_fingerprints"].items()), ""]
    return lines


def retraining_section(report: dict) -> list[str]:
    """Clinicians' feedback rows that trained the model (data.feedback) and the promotion gate's verdict."""
    feedback = (report.get("data_summary") or {}).get("feedback")
    verdict = report.get("gate")
    if not feedback and not verdict:
        return []
    lines = ["## Retraining", ""]
    if feedback:
        lines.append(f"- Feedback rows: {feedback['added_to_train']} clinician-labelled row(s) from "
                     f"`{feedback['source']}` trained this model (training split only); "
                     f"{feedback['duplicates_of_splits_dropped']} dropped as already in a split, "
                     f"{feedback['repeats_dropped']} as repeats")
    if verdict:
        low, high = verdict["ci"]
        lines.append(f"- Promotion gate: compared with `{verdict['against']}` ({verdict['against_version']}) on the same "
                     f"{verdict['test_rows']} test rows, {verdict['metric']} {number(verdict['candidate'])} vs "
                     f"{number(verdict['earlier'])} (difference {verdict['difference']:+.4f}, "
                     f"{verdict['confidence']:.0%} paired bootstrap CI [{low:+.4f}, {high:+.4f}], alpha "
                     f"{verdict['alpha']:g}; McNemar p = {verdict['mcnemar_accuracy_p_value']:.3g}): not significantly "
                     "worse, promoted")
    return lines + [""]


def selection_section(report: dict) -> list[str]:
    sweep = report["config"]["sweep"]
    metric = report["metric"]
    seeds = report.get("seed_robustness") or {}
    objectives = report.get("objectives") or [{"metric": metric, "mode": report["mode"]}]
    lines = ["## How it was chosen", "",
             f"- Sweep `{report.get('sweep', sweep['name'])}`: {report.get('num_trials', 1)} trial(s), searcher "
             f"{sweep['searcher']}, scheduler {sweep['scheduler']}; objective(s): "
             + ", ".join(f"`{o['metric']}` ({o['mode']})" for o in objectives)]
    if sweep.get("search_space"):
        lines += ["- Search space:", "", "```yaml", yaml.safe_dump(sweep["search_space"], sort_keys=False).rstrip(), "```", ""]
    selection = report.get("selection") or {}
    if selection:
        lines += [f"- Ranking rule: {selection['ranking_rule']}",
                  f"- Seed robustness: the top {selection['top_k']} configuration(s) re-trained with extra seeds "
                  f"{selection['extra_seeds'] or '(none: switched off)'}; the best mean wins",
                  f"- Promoted run: {selection['promoted_run_rule']} (seed {selection['promoted_seed']}, "
                  f"{selection['promoted_run_origin']} run)"]
    if seeds.get("n", 1) > 1:
        lines += [f"- `{seeds['metric']}` of this configuration over seeds {seeds['seeds']}: "
                  f"{number(seeds['mean'])} ± {number(seeds['std'])} (mean ± sample std, n={seeds['n']}; "
                  f"values {', '.join(number(v) for v in seeds['values'])})"]
    else:
        lines += [f"- Seeds used: {seeds.get('seeds')} (no seed re-runs)"]
    candidates = report.get("candidates") or []
    if len(candidates) > 1:
        lines += ["", *table(["rank", "trial", f"{metric} mean ± std", "seeds", "hyperparameters"],
                             [[i, c["trial_id"], f"{number(c['mean'])} ± {number(c['std'])}", " ".join(map(str, c["seeds"])),
                               ", ".join(f"{k}={number(v)}" for k, v in c["params"].items())]
                              for i, c in enumerate(candidates, 1)])]
    return lines + [""]


def evaluation_section(report: dict) -> list[str]:
    labels = report["label_names"]
    validation, test = report["validation"], report["test"]
    intervals = report["test_ci"]["intervals"]
    test_rows = (report.get("data_summary") or {}).get("split_sizes", {}).get("test", "?")
    lines = ["## Evaluation", "",
             f"Validation: the promoted evaluation step. Test: scored once, for this model only. "
             f"95% confidence intervals: percentile bootstrap over the {test_rows} "
             f"test rows ({report['test_ci']['resamples']} resamples, seed {report['test_ci']['seed']}); they reflect the "
             "finite test set, not training variation (see the seed spread above).", ""]
    rows = [[name, number(validation.get(f"val_{key}")), number(test[f"test_{key}"]), interval(intervals.get(f"test_{key}"))]
            for key, name in HEADLINE if f"test_{key}" in test]
    lines += table(["metric", "validation", "test", "test 95% CI"], rows) + [""]
    per_val, per_test, per_ci = (validation.get("val_f1_per_class", {}), test.get("test_f1_per_class", {}),
                                 intervals.get("test_f1_per_class", {}))
    lines += ["Per-class F1:", ""]
    lines += table(["label", "validation", "test", "test 95% CI"],
                   [[name, number(per_val.get(name)), number(per_test.get(name)), interval(per_ci.get(name))]
                    for name in labels]) + [""]
    matrix = report["confusion_matrix"]["matrix"]
    lines += ["Confusion matrix on the test split (rows: true label, columns: predicted label):", ""]
    return lines + table(["true \\ predicted", *labels], [[name, *row] for name, row in zip(labels, matrix)]) + [""]


def subgroup_section(subgroups: dict) -> list[str]:
    """The "Subgroup performance" section (medsweep.evaluation.subgroups' report)."""
    lines = ["## Subgroup performance", "",
             f"Test metrics per group ({int(subgroups['confidence'] * 100)}% CIs: {subgroups['method']}, "
             f"{subgroups['resamples']} resamples). Macro-F1 averages over the classes present in the group. "
             f"Group columns were never model inputs.", ""]
    gap = subgroups.get("largest_gap")
    if gap:
        lines += [f"**Largest gap: {gap['metric']} differs by {gap['difference']:.4f} between "
                  f"`{gap['column']}` = `{gap['groups'][0]}` and `{gap['groups'][1]}`"
                  + (" (their CIs overlap: it may be test-set noise).**" if gap["cis_overlap"] else
                     " (their CIs do not overlap).**"), ""]
    for column, entry in subgroups["columns"].items():
        rows = [[value, s["n"], number(s["accuracy"]), interval(s["ci"]["accuracy"]), number(s["f1_macro"]),
                 interval(s["ci"]["f1_macro"])] for value, s in entry["groups"].items()]
        lines += [f"`{column}`:", "", *table(["group", "n", "accuracy", "accuracy CI", "macro-F1", "macro-F1 CI"], rows), ""]
    small = [f"{c}={v}" for c, e in subgroups["columns"].items() for v, s in e["groups"].items()
             if s["n"] < subgroups["min_group_size_for_gap"]]
    if small:
        lines += [f"Groups under {subgroups['min_group_size_for_gap']} test rows (not used for the gap): "
                  + ", ".join(small), ""]
    return lines


def calibration_section(report: dict) -> list[str]:
    """The "Calibration and prediction sets" section (promotion/calibration.py's numbers in metrics.json)."""
    section, conformal = report.get("calibration"), report.get("conformal")
    if not section:
        return []
    lines = ["## Calibration and prediction sets", ""]
    fitted_on = section.get("fitted_on", "validation")
    if section["applied"]:
        lines += [f"The probabilities are temperature-scaled: one temperature T = {section['temperature']:.4f}, fitted on "
                  f"the {section['rows']} {fitted_on} rows by minimising the negative log-likelihood, is baked into the "
                  "classifier layer of the weights, so every loader (`transformers.pipeline`, `medsweep.predict`, "
                  "`medsweep.serve`) returns the calibrated probabilities. T changes no predicted label.", ""]
        before, after = section["test"]["before"], section["test"]["after"]
        names = [("ece", "expected calibration error"), ("nll", "negative log-likelihood"), ("brier", "Brier score")]
        lines += table(["test metric (lower is better)", "before", "95% CI", "after", "95% CI"],
                       [[name, number(before[key]), interval(before["ci"].get(key)), number(after[key]),
                         interval(after["ci"].get(key))] for key, name in names]) + [""]
        if section.get("note"):
            lines += [f"Note: {section['note']}.", ""]
    else:
        lines += [f"The probabilities are not temperature-scaled: {section.get('note', '')}.", ""]
    if conformal:
        test = conformal["test"]
        ci = test["coverage_ci"]
        lines += [f"Prediction sets (split-conformal, LAC score) at a target coverage of {conformal['coverage']:.0%}: "
                  f"a label is in the set when 1 - p(label) <= {conformal['threshold']:.4f} (the threshold fitted on "
                  f"the {conformal['calibration_rows']} {fitted_on} rows, stored in `decision.json`). On data exchangeable "
                  f"with the {fitted_on} split a set holds the true label at least that often; "
                  + ("the validation split also chose the checkpoint and the temperature, so the test coverage below is "
                     "the honest check." if fitted_on == "validation" else
                     "those rows (data.calibration_fraction, carved from the training rows) were neither trained on nor "
                     "used to choose the model; the test coverage below checks it."), "",
                  f"Test coverage: {number(test['coverage'])} (95% Clopper-Pearson CI {interval(ci['interval'])}, "
                  f"{test['rows']} rows); mean set size {number(test['mean_set_size'])}; sets with one label "
                  f"{test['set_size_share']['one']:.0%}, more than one {test['set_size_share']['more']:.0%}, "
                  f"none {test['set_size_share']['empty']:.0%}.", ""]
        levels = conformal.get("levels") or [{"coverage": conformal["coverage"], "threshold": conformal["threshold"],
                                              "test": test}]
        lines += [f"Test coverage at each target level (each threshold fitted on the same {fitted_on} rows; "
                  f"`decision.json` serves the promote.coverage level, {conformal['coverage']:.0%}):", ""]
        lines += table(["target coverage", "threshold", "test coverage", "95% CI", "target inside CI", "mean set size"],
                       [[f"{level['coverage']:.0%}", f"{level['threshold']:.4f}", number(level["test"]["coverage"]),
                         interval(level["test"]["coverage_ci"]["interval"]),
                         "yes" if level["test"]["coverage_ci"]["interval"][0] <= level["coverage"]
                         <= level["test"]["coverage_ci"]["interval"][1] else "no",
                         number(level["test"]["mean_set_size"])] for level in levels]) + [""]
        lines += table(["true label", "test rows", *[f"coverage at {level['coverage']:.0%}" for level in levels],
                        *[f"mean set size at {level['coverage']:.0%}" for level in levels]],
                       [[name, c["rows"], *[number(level["test"]["per_class"][name]["coverage"]) for level in levels],
                         *[number(level["test"]["per_class"][name]["mean_set_size"]) for level in levels]]
                        for name, c in test["per_class"].items()]) + [""]
        lines += ["`medsweep.predict` writes each row's set (`prediction_set`), `medsweep.serve` returns it "
                  "(`prediction_set`, `set_size`); `refer_when=set_size>1` turns an uncertain label into `refer` "
                  "(`set_size!=1` refers empty sets too: no label is plausible enough).", ""]
    return lines + risk_coverage_lines(report.get("risk_coverage")) + decision_lines(report.get("decision_rule"))


def risk_coverage_lines(curve: dict | None) -> list[str]:
    """Accuracy of the cases the model keeps when the least confident ones are referred."""
    if not curve:
        return []
    return ([f"Risk-coverage (test split, {curve['rows']} rows ordered by the top-class probability, labels from "
             f"the {curve.get('labels', 'argmax')}): the accuracy of the cases the model keeps when the least "
             "confident share is referred to a clinician.", ""]
            + table(["referred", "kept rows", "accuracy of kept"],
                    [[f"{point['referred_share']:.0%}", point["kept_rows"], number(point["accuracy_kept"])]
                     for point in curve["at"]]) + [""])


def decision_lines(rule: dict | None) -> list[str]:
    """The decision rule (promotion/decision.py) and what plain argmax would give instead."""
    if not rule:
        return []
    test = rule["test"]
    kind = {"offsets": "per-class offsets on the log probabilities (label = argmax(log p + b))",
            "sensitivity_threshold": "a threshold on the positive class's probability", "argmax": "the argmax"}
    return [f"Decision rule: {kind.get(rule['kind'], rule['kind'])}; {rule['why']}. On the test split the rule gives "
            f"macro-F1 {number(test['rule']['f1_macro'])} and accuracy {number(test['rule']['accuracy'])}; plain argmax "
            f"gives {number(test['argmax']['f1_macro'])} and {number(test['argmax']['accuracy'])}.", ""]


def usage_section() -> list[str]:
    return ["## How to use", "", "```python", "from transformers import pipeline",
            'classify = pipeline("text-classification", model="path/to/promoted", top_k=None)',
            "classify(\"...\")", "```", "",
            "```bash", "python -m medsweep.predict model=path/to/promoted input=texts.csv output=predictions.csv",
            "MEDSWEEP_API_TOKEN=... python -m medsweep.serve model=path/to/promoted", "```", ""]


def limitations_section(report: dict) -> list[str]:
    data_cfg, trainer = report["config"]["data"], report["config"]["trainer"]
    labels = report["label_names"]
    summary = report.get("data_summary") or {}
    seeds = report.get("seed_robustness") or {}
    ece = report["test"].get("test_ece")
    counts = summary.get("class_counts")
    sizes = [sum(counts.get(s, {}).get(name, 0) for s in counts) for name in labels] if counts else []
    subgroups = report.get("subgroups")
    lines = [
        "## Limitations and known biases", "",
        f"- The model only knows the {len(labels)} labels above. A text about anything else still gets one of them, "
        "often with high confidence.",
        f"- It was trained and tested on `{data_cfg['name']}` only. Text of another kind (clinical notes, discharge "
        "letters, other languages, other institutions or periods) differs in vocabulary and style; expect lower accuracy "
        "and re-evaluate before use.",
        f"- Probabilities are not clinical risks. Test expected calibration error is {number(ece)}"
        + (": treat the scores as a ranking, not as frequencies." if isinstance(ece, float) and ece > 0.05 else "."),
        ("- Subgroup performance was measured only for the group columns above ("
         + ", ".join(f"`{c}`" for c in subgroups["columns"]) + "); groups not recorded in the data "
         "(e.g. ethnicity, socio-economic status) could not be checked." if subgroups else
         "- The data carry no patient demographics, so performance for subgroups (age, sex, ethnicity, "
         "socio-economic status) could not be measured; biases in who is studied and published carry into the model."),
        "- Texts labelled in conflicting ways were dropped before training, so the hardest, most ambiguous cases are "
        "under-represented in the test metrics.",
        f"- Texts longer than {trainer['max_length']} tokens are truncated; information after that point is not seen.",
    ]
    if sizes and min(sizes) > 0:
        small = labels[sizes.index(min(sizes))]
        lines += [f"- Classes are imbalanced ({min(sizes)} to {max(sizes)} examples); `{small}` has the fewest and its "
                  "per-class scores are the least certain (see the CIs)."]
    if data_cfg["name"] == "medical_abstracts":
        lines += ["- Medical Abstracts are published PubMed abstracts in English; the class 'general pathological "
                  "conditions' is a broad catch-all that overlaps the others, and the corpus has known label noise."]
    lines += [f"- Selection used the validation split; the seed spread ({number(seeds.get('std'))} in `{report['metric']}`) "
              "says how much a re-training of the same configuration can differ." if seeds.get("n", 1) > 1 else
              "- Selection used the validation split and one training seed; a re-training may score differently."]
    return lines


def render(report: dict) -> str:
    lines = [front_matter(report), *introduction(report), *model_section(report), *data_section(report),
             *retraining_section(report), *selection_section(report), *range_section(report), *evaluation_section(report)]
    if report.get("subgroups"):
        lines += subgroup_section(report["subgroups"])
    lines += calibration_section(report)
    lines += [*usage_section(), *limitations_section(report)]
    return "\n".join(lines) + "\n"
