"""issue 27 at promotion: the temperature and the conformal threshold fitted on the validation split,
what metrics.json and the card say about them, a refused temperature, promote.calibrate=false, and
decision.json read back with type checks (a hostile one refused, a missing one predicting as before)."""

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import expected_calibration_error
from medsweep.promotion import calibration, release
from medsweep.promotion.release import promote_checkpoint
from medsweep.release import layout
from medsweep.serving import predict
from medsweep.serving.inference import load_promoted, prediction_sets
from tests.conftest import TINY, compose_config, tiny_checkpoints

TEXTS = ["Adenocarcinoma of the colon with hepatic metastases.", "Acute myocardial infarction.",
         "Ischemic stroke of the middle cerebral artery.", "Crohn disease of the terminal ileum."]


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A real tiny trial's last checkpoint, promoted once: (checkpoint, run dir, promoted link)."""
    base = tmp_path_factory.mktemp("calibrated")
    kept, _ = tiny_checkpoints(base)[-1]
    return kept, base / "run", promote_checkpoint(kept, base / "run")


def test_metrics_json_reports_calibration_before_and_after_from_the_one_test_pass(promoted):
    _, _, link = promoted
    report = layout.read_metrics(link)
    section, conformal = report["calibration"], report["conformal"]
    assert section["fitted_on"] == "validation" and section["rows"] == report["data_summary"]["split_sizes"]["validation"]
    saved = layout.read_test_predictions(link)
    labels, after = saved["labels"], saved["probs"]
    # "before" is the calibrated logits times T (log p is the logits up to a per-row constant).
    before = calibration.softmax(np.log(after) * section["temperature"])
    assert section["test"]["before"]["ece"] == pytest.approx(expected_calibration_error(labels, before), abs=1e-9)
    assert section["test"]["after"]["ece"] == pytest.approx(report["test"]["test_ece"], abs=1e-9)
    assert section["test"]["after"]["nll"] == pytest.approx(-np.log(after[np.arange(len(labels)), labels]).mean())
    for side in ("before", "after"):
        for name in ("ece", "nll", "brier"):
            low, high = section["test"][side]["ci"][name]
            assert low <= section["test"][side][name] <= high
    # T minimises the validation NLL, so it cannot make the test NLL much worse.
    assert section["test"]["after"]["nll"] <= section["test"]["before"]["nll"] + 0.05
    # The sets' test coverage, recomputed from the saved probabilities and the stored threshold.
    sets = prediction_sets(after, conformal["threshold"])
    assert conformal["test"]["coverage"] == pytest.approx(sets[np.arange(len(labels)), labels].mean())
    assert conformal["test"]["mean_set_size"] == pytest.approx(sets.sum(axis=1).mean())
    low, high = conformal["test"]["coverage_ci"]["interval"]
    assert low <= conformal["test"]["coverage"] <= high and conformal["coverage"] == 0.9
    card = (link / "README.md").read_text()
    assert "## Calibration and prediction sets" in card and f"T = {section['temperature']:.4f}" in card
    assert f"{conformal['threshold']:.4f}" in card


def test_the_conformal_threshold_is_the_validation_splits(promoted):
    """Recomputed from the validation split through the promoted model: the threshold in decision.json."""
    from medsweep import data

    _, _, link = promoted
    config = layout.read_metrics(link)["config"]
    validation = data.load_splits(config["data"]).validation
    probs = load_promoted(link).predict(validation["text"].tolist())
    expected = calibration.lac_threshold(probs, validation["label"].to_numpy(), 0.9)
    assert layout.read_settings(link).decision["conformal"]["threshold"] == pytest.approx(expected, abs=1e-5)


def test_a_temperature_outside_the_range_is_refused_and_the_model_published_uncalibrated(promoted, monkeypatch, capsys):
    """Refused in one line, never baked: a sweep's best model is still published (a tiny or failed
    model's logits can carry no information: T -> infinity), uncalibrated, and says so."""
    kept, run_dir, link = promoted
    calibrated = layout.read_metrics(link)["calibration"]["temperature"]
    real, calls = release.split_logits, []

    def overconfident_validation(*args):
        calls.append(1)
        # The validation split's logits, wildly over-confident (T ~ 1000); the test split's as they are.
        return real(*args) * (1000.0 if len(calls) == 1 else 1.0)

    monkeypatch.setattr(release, "split_logits", overconfident_validation)
    capsys.readouterr()
    new = promote_checkpoint(kept, run_dir)
    printed = [line for line in capsys.readouterr().out.splitlines() if "calibration" in line]
    assert len(printed) == 1 and "temperature refused" in printed[0] and "outside [0.05, 20.0]" in printed[0]
    report = layout.read_metrics(new)
    assert report["version"] == "v002" and report["calibration"]["applied"] is False
    assert report["calibration"]["temperature"] is None and "outside [0.05, 20.0]" in report["calibration"]["note"]
    assert "not temperature-scaled" in (new / "README.md").read_text()
    # Nothing was baked: the new folder's probabilities are the calibrated folder's logits times T.
    scaled = load_promoted(run_dir / "promoted-versions" / "v001")
    np.testing.assert_allclose(load_promoted(new).predict(TEXTS),
                               calibration.softmax(np.log(scaled.predict(TEXTS)) * calibrated), atol=1e-5)
    assert layout.read_settings(new).decision is not None  # the sets are still there, on the model's own probabilities


def test_calibrate_false_bakes_nothing_and_still_writes_sets(promoted, tmp_path, monkeypatch):
    from transformers import pipeline

    kept, run_dir, link = promoted
    real = release.read_checkpoint_info

    def uncalibrated(directory):
        info = real(directory)
        info["config"]["promote"]["calibrate"] = False
        return info

    monkeypatch.setattr(release, "read_checkpoint_info", uncalibrated)
    plain = promote_checkpoint(kept, tmp_path / "run")
    report = layout.read_metrics(plain)
    assert report["calibration"]["applied"] is False and report["calibration"]["temperature"] is None
    assert "promote.calibrate=false" in (plain / "README.md").read_text()
    assert layout.read_settings(plain).decision["conformal"]["calibration_rows"] == report["calibration"]["rows"]
    # The calibrated folder's probabilities are the plain one's logits over T, same labels.
    link = run_dir / "promoted-versions" / "v001"  # (the calibrated one: a test above published v002)
    temperature = layout.read_metrics(link)["calibration"]["temperature"]
    classify = lambda folder: pipeline("text-classification", model=str(folder), top_k=None)(TEXTS)  # noqa: E731
    labels = layout.read_settings(plain).label_names
    as_array = lambda out: np.array([[{o["label"]: o["score"] for o in row}[n] for n in labels] for row in out])  # noqa: E731
    raw, scaled = as_array(classify(plain)), as_array(classify(link))
    np.testing.assert_allclose(scaled, calibration.softmax(np.log(raw) / temperature), atol=1e-5)
    assert (raw.argmax(axis=1) == scaled.argmax(axis=1)).all()


HOSTILE = {
    "threshold_text": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": "0.5", "calibration_rows": 60}},
    "threshold_bool": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": True, "calibration_rows": 60}},
    "threshold_above_one": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 1.5, "calibration_rows": 60}},
    "threshold_negative": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": -0.1, "calibration_rows": 60}},
    "threshold_nan": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": math.nan, "calibration_rows": 60}},
    "coverage_one": {"conformal": {"method": "lac", "coverage": 1.0, "threshold": 0.5, "calibration_rows": 60}},
    "rows_float": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60.0}},
    "rows_zero": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 0}},
    "other_method": {"conformal": {"method": "aps", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60}},
    "extra_field": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60,
                                  "exec": "import os"}},
    "extra_section": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60},
                      "loader": "pickle"},
    "conformal_list": {"conformal": [0.5]},
    "not_a_mapping": [1, 2],
    "offsets_text": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60},
                     "offsets": ["0", "1"]},
    "offsets_inf": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60},
                    "offsets": [0.0, math.inf, 0.0, 0.0, 0.0]},
    "offsets_wrong_length": {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 0.5, "calibration_rows": 60},
                             "offsets": [0.0, 1.0]},
    "not_json": "{not json",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_decision_file_is_refused_in_one_line(promoted, tmp_path, capsys, case):
    _, _, link = promoted
    folder = tmp_path / "model"
    shutil.copytree(os.path.realpath(link), folder)
    content = HOSTILE[case]
    (folder / layout.DECISION_FILE).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as refused:
        layout.read_settings(folder)
    assert len(str(refused.value).splitlines()) == 1 and "decision.json" in str(refused.value)
    source = tmp_path / "in.csv"
    pd.DataFrame({"medical_abstract": TEXTS}).to_csv(source, index=False)
    assert predict.main([f"model={folder}", f"input={source}", f"output={tmp_path / 'out.csv'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsweep.predict: error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.csv").exists()


def test_decision_is_checked_before_it_is_written(tmp_path):
    with pytest.raises(ConfigError):
        layout.write_decision(tmp_path, {"conformal": {"method": "lac", "coverage": 0.9, "threshold": 2.0,
                                                       "calibration_rows": 5}})
    assert not (tmp_path / layout.DECISION_FILE).exists()


def test_coverage_is_range_checked():
    from medsweep.config import validate

    config = compose_config(TINY + ["promote.coverage=1.0"])
    with pytest.raises(ConfigError, match="promote.coverage"):
        validate(config)
    assert compose_config(TINY)["promote"]["coverage"] == 0.9 and compose_config(TINY)["promote"]["calibrate"] is True


def test_coverage_at_090_and_095_and_the_risk_coverage_curve_are_reported(promoted):
    """metrics.json, the card: coverage with its binomial CI and set size per class at both levels,
    and the risk-coverage curve of the served labels, recomputed here from the saved probabilities."""
    from medsweep.evaluation.metrics import risk_coverage

    _, _, link = promoted
    report = layout.read_metrics(link)
    saved = layout.read_test_predictions(link)
    labels, probs = saved["labels"], saved["probs"]
    levels = {level["coverage"]: level for level in report["conformal"]["levels"]}
    assert sorted(levels) == [0.9, 0.95]
    assert levels[0.9]["threshold"] == report["conformal"]["threshold"]
    assert levels[0.95]["threshold"] >= levels[0.9]["threshold"]  # more coverage asks for a looser threshold
    for level in levels.values():
        sets = prediction_sets(probs, level["threshold"])
        assert level["test"]["coverage"] == pytest.approx(sets[np.arange(len(labels)), labels].mean())
        first = saved["label_names"][0]
        rows = labels == 0
        assert level["test"]["per_class"][first]["mean_set_size"] == pytest.approx(sets[rows].sum(axis=1).mean())
    curve = report["risk_coverage"]
    rule = report["decision_rule"]
    served = None if not rule["applied"] else np.argmax(np.log(probs) + np.array(rule["offsets"]), axis=1)
    assert curve["at"] == risk_coverage(labels, probs, served)["at"]
    assert curve["at"][0]["accuracy_kept"] == pytest.approx(rule["test"]["rule"]["accuracy"])
    card = (link / "README.md").read_text()
    assert "Risk-coverage" in card and "| 95% |" in card and "mean set size at 95%" in card


def test_with_calibration_fraction_promotion_calibrates_on_the_carved_rows(promoted, tmp_path, monkeypatch):
    """data.calibration_fraction: T, the rule and the thresholds are fitted on the calibration split
    (training rows no trial saw), and metrics.json, decision.json and the card say so."""
    from medsweep import data

    kept, _, _ = promoted
    real = release.read_checkpoint_info

    def carved(directory):
        info = real(directory)
        info["config"]["data"]["calibration_fraction"] = 0.2
        return info

    monkeypatch.setattr(release, "read_checkpoint_info", carved)
    link = promote_checkpoint(kept, tmp_path / "run")
    report = layout.read_metrics(link)
    held_out = data.load_splits(report["config"]["data"]).calibration
    assert report["calibration"]["fitted_on"] == report["conformal"]["fitted_on"] == "calibration"
    assert report["calibration"]["rows"] == len(held_out) == report["data_summary"]["split_sizes"]["calibration"]
    assert len(held_out) != report["data_summary"]["split_sizes"]["validation"]
    probs = load_promoted(link).predict(held_out["text"].tolist())
    expected = calibration.lac_threshold(probs, held_out["label"].to_numpy(), 0.9)
    assert layout.read_settings(link).decision["conformal"]["threshold"] == pytest.approx(expected, abs=1e-5)
    assert f"the {len(held_out)} calibration rows" in (link / "README.md").read_text()
