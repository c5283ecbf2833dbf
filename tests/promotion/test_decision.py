"""The decision rule (promotion/decision.py): offsets that raise macro-F1 are applied only when they
beat argmax beyond their noise; a screening threshold keeps its sensitivity; predict and serve apply
the rule the folder carries."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from medsweep.promotion import decision
from medsweep.release import layout
from medsweep.serving import predict
from medsweep.serving.inference import load_promoted


def test_the_fast_macro_f1_is_sklearns():
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        labels, predicted = rng.integers(0, k, 300), rng.integers(0, k - 1, 300)  # one class never predicted
        predicted[:5] = k - 1
        expected = f1_score(labels, predicted, average="macro", labels=list(range(k)), zero_division=0)
        assert decision.macro_f1(labels, predicted, k) == pytest.approx(expected, abs=1e-12)


def imbalanced(n: int, seed: int, shrink: float, priors=(0.62, 0.30, 0.08)):
    """Three classes, the last rare (8%) by default; the model's probabilities come from the true
    posterior with the last class's share shrunk by `shrink` (1.0: a Bayes-calibrated model)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=list(priors))
    logits = rng.normal(0.0, 1.0, (n, 3))
    logits[np.arange(n), labels] += 1.6
    probs = np.exp(logits) * np.array(priors)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[:, 2] *= shrink
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_offsets_that_raise_macro_f1_beyond_their_noise_are_applied():
    labels, probs = imbalanced(3000, seed=1, shrink=0.3)
    rule = decision.choose_rule(probs, labels, "val_f1_macro", None, ["a", "b", "rare"])
    assert rule["applied"] and rule["kind"] == "offsets" and rule["out_of_fold"]["ci"][0] > 0
    # Out of sample too: fresh rows from the same model gain macro-F1.
    test_labels, test_probs = imbalanced(3000, seed=2, shrink=0.3)
    effect = decision.test_effect(test_probs, test_labels, rule["offsets"])
    assert effect["rule"]["f1_macro"] > effect["argmax"]["f1_macro"] + 0.02
    assert rule["offsets"][2] > 0  # the rare class gets the boost


def test_offsets_are_not_applied_when_argmax_is_already_right_or_the_metric_wants_argmax():
    # Balanced classes and a calibrated model: the argmax is already (near) macro-F1 optimal.
    labels, probs = imbalanced(600, seed=3, shrink=1.0, priors=(1 / 3, 1 / 3, 1 / 3))
    rule = decision.choose_rule(probs, labels, "val_f1_macro", None, ["a", "b", "rare"])
    assert not rule["applied"] and "noise" in rule["why"]
    rule = decision.choose_rule(*imbalanced(600, seed=3, shrink=0.3), "val_accuracy", None, ["a", "b", "rare"])
    assert not rule["applied"] and "argmax" in rule["why"]


def test_a_screening_threshold_keeps_the_target_sensitivity_and_says_what_it_costs():
    rng = np.random.default_rng(4)
    labels = rng.choice(2, size=2000, p=[0.8, 0.2])
    p1 = np.clip(rng.beta(2, 5, 2000) + 0.35 * labels, 0.0, 1.0)
    probs = np.column_stack([1 - p1, p1])
    rule = decision.choose_rule(probs, labels, "val_f1_macro", 0.95, ["negative", "positive"])
    assert rule["applied"] and rule["kind"] == "sensitivity_threshold"
    assert rule["validation"]["sensitivity"] >= 0.95
    argmax_sensitivity = (probs.argmax(axis=1)[labels == 1] == 1).mean()
    assert argmax_sensitivity < 0.95 and rule["validation"]["specificity"] < 1.0


@pytest.fixture(scope="module")
def promoted_folder(tmp_path_factory):
    """A real tiny promotion's version folder, copied so a test may change its decision.json."""
    from medsweep.promotion.release import promote_checkpoint
    from tests.conftest import tiny_checkpoints

    base = tmp_path_factory.mktemp("decision")
    kept, _ = tiny_checkpoints(base)[-1]
    link = promote_checkpoint(kept, base / "run")
    report = layout.read_metrics(link)
    # Every promotion records its rule and what argmax would have given on the test split.
    assert report["decision_rule"]["kind"] in ("argmax", "offsets")
    assert set(report["decision_rule"]["test"]) == {"rule", "argmax"}
    assert "Decision rule:" in (link / layout.CARD_FILE).read_text()
    return os.path.realpath(link)


def test_predict_and_serve_apply_the_offsets_the_folder_carries(promoted_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(promoted_folder, folder)
    texts = ["Adenocarcinoma of the colon.", "Acute myocardial infarction.", "Ischemic stroke.", "Crohn disease."]
    before = load_promoted(folder)
    names = before.label_names
    decision_file = folder / layout.DECISION_FILE
    content = json.loads(decision_file.read_text())
    # A rule that favours the last label by far: every row takes it; the probabilities are unchanged.
    content["offsets"] = [0.0] * (len(names) - 1) + [50.0]
    decision_file.write_text(json.dumps(content))
    after = load_promoted(folder)
    probs = after.predict(texts)
    np.testing.assert_allclose(probs, before.predict(texts), atol=1e-6)
    assert [names[i] for i in after.decide(probs)] == [names[-1]] * len(texts)
    source = tmp_path / "in.csv"
    pd.DataFrame({"medical_abstract": texts}).to_csv(source, index=False)
    assert predict.main([f"model={folder}", f"input={source}", f"output={tmp_path / 'out.csv'}"]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["predicted_label"].tolist() == [names[-1]] * len(texts)
