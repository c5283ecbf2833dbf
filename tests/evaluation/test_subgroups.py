"""Subgroup audit: per-group numbers against a hand computation; group columns and their errors."""

import numpy as np
import pandas as pd
import pytest

from medsweep.evaluation import subgroups
from medsweep.promotion.card import subgroup_section
from medsweep import data
from medsweep.config import ConfigError, validate
from tests.conftest import SHARED_DATA, compose_config


def one_hot(preds, num_classes=3):
    # Confident but not certain, so argmax is the prediction.
    probs = np.full((len(preds), num_classes), 0.1)
    probs[np.arange(len(preds)), preds] = 0.8
    return probs


def test_per_group_numbers_match_a_hand_computation():
    # Group A (12 rows): class 0 all right; class 1 half right (2 predicted as 0); class 2 all right.
    a_labels = [0] * 4 + [1] * 4 + [2] * 4
    a_preds = [0] * 4 + [1, 1, 0, 0] + [2] * 4
    # Group B (10 rows, class 2 absent): everything predicted as 0.
    b_labels = [0] * 5 + [1] * 5
    b_preds = [0] * 10
    # Group C (3 rows, too small for the gap): all wrong.
    c_labels, c_preds = [0, 1, 2], [1, 2, 0]
    labels = np.array(a_labels + b_labels + c_labels)
    probs = one_hot(a_preds + b_preds + c_preds)
    groups = {"site": np.array(["A"] * 12 + ["B"] * 10 + ["C"] * 3)}

    report = subgroups.subgroup_report(labels, probs, groups, n_resamples=200, seed=0)
    site = report["columns"]["site"]["groups"]
    assert {g: s["n"] for g, s in site.items()} == {"A": 12, "B": 10, "C": 3}
    # A: accuracy 10/12. F1 class 0: tp 4, fp 2, fn 0 -> 8/10; class 1: tp 2, fn 2 -> 4/6; class 2: 1.
    assert site["A"]["accuracy"] == pytest.approx(10 / 12)
    assert site["A"]["f1_macro"] == pytest.approx((0.8 + 4 / 6 + 1.0) / 3)
    # B: accuracy 5/10. F1 class 0: tp 5, fp 5 -> 10/15; class 1: 0; class 2 absent -> not averaged in.
    assert site["B"]["accuracy"] == pytest.approx(0.5)
    assert site["B"]["f1_macro"] == pytest.approx((10 / 15 + 0.0) / 2)
    assert site["C"]["accuracy"] == 0.0
    for s in site.values():
        for metric in subgroups.AUDIT_METRICS:
            low, high = s["ci"][metric]
            assert 0.0 <= low <= s[metric] <= high <= 1.0
    # Gap: accuracy 10/12 - 1/2 = 0.333; macro-F1 0.822 - 0.333 = 0.489 -> macro-F1, A over B; C (3 rows) ignored.
    gap = report["largest_gap"]
    assert gap["column"] == "site" and gap["metric"] == "f1_macro" and gap["groups"] == ["A", "B"]
    assert gap["difference"] == pytest.approx((0.8 + 4 / 6 + 1.0) / 3 - 1 / 3)
    # The flag says whether the lower group's CI reaches the higher group's.
    assert gap["cis_overlap"] == (site["B"]["ci"]["f1_macro"][1] >= site["A"]["ci"]["f1_macro"][0])


def test_no_gap_without_two_groups_of_useful_size():
    labels = np.array([0, 1] * 10 + [0, 1])
    probs = one_hot(labels.tolist(), num_classes=2)
    report = subgroups.subgroup_report(labels, probs, {"sex": np.array(["f"] * 20 + ["m"] * 2)}, n_resamples=100)
    assert report["columns"]["sex"]["largest_gap"] is None
    assert report["largest_gap"] is None
    lines = "\n".join(subgroup_section(report))
    assert "sex=m" in lines and "| f | 20 | 1.0000 |" in lines


def write_csv(path, with_group=True):
    rows = [{"text": f"note number {i} about {'heart' if i % 2 else 'tumour'}", "label": "a" if i % 2 else "b",
             **({"site": "north" if i % 3 else ""} if with_group else {})} for i in range(60)]
    pd.DataFrame(rows).to_csv(path, index=False)


def test_group_columns_ride_along_with_the_splits_but_not_in_the_fingerprint(tmp_path):
    path = tmp_path / "notes.csv"
    write_csv(path)
    base = compose_config(["data=csv", f"data.path={path}"])["data"]
    plain = data.load_splits(base)
    grouped = data.load_splits({**base, "group_columns": ["site"]})
    assert grouped.fingerprints == plain.fingerprints
    for name in data.SPLITS:
        part = grouped.split(name)
        assert list(subgroups.group_columns(part)) == ["site"]
        # Every row keeps its own group value (empty -> "(missing)") through cleaning and splitting.
        number = part["text"].str.extract(r"note number (\d+)")[0].astype(int)
        expected = np.where(number % 3 == 0, data.MISSING_GROUP, "north")
        assert (part[data.GROUP_PREFIX + "site"].to_numpy() == expected).all()


def test_a_missing_group_column_is_a_one_line_config_error(tmp_path):
    path = tmp_path / "notes.csv"
    write_csv(path, with_group=False)
    cfg = compose_config(["data=csv", f"data.path={path}", "data.group_columns=[site]"])
    with pytest.raises(ConfigError, match=r"group column 'site' \(data.group_columns\) not found") as error:
        data.load_splits(cfg["data"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="must not contain the text or label column"):
        validate(compose_config(["data=csv", f"data.path={path}", "data.group_columns=[label]"]))


def test_worst_group_is_the_lowest_group_of_any_column_ignoring_tiny_groups():
    # Same rows as the hand computation above, plus a second column that splits them differently.
    labels = np.array([0] * 4 + [1] * 4 + [2] * 4 + [0] * 5 + [1] * 5 + [0, 1, 2])
    probs = one_hot([0] * 4 + [1, 1, 0, 0] + [2] * 4 + [0] * 10 + [1, 2, 0])
    site = np.array(["A"] * 12 + ["B"] * 10 + ["C"] * 3)
    worst = subgroups.worst_group(labels, probs, {"site": site})
    # B is worst on both (accuracy 0.5, macro-F1 over its two classes 1/3); C (3 rows, all wrong) is ignored.
    assert worst == {"worst_group_accuracy": pytest.approx(0.5), "worst_group_f1_macro": pytest.approx(1 / 3)}
    # A second column's group can be worse: rows 0-5 and 12-16 (all predicted 0) as one group of 11.
    shift = np.array(["x"] * 6 + ["y"] * 6 + ["x"] * 5 + ["y"] * 8)
    assert subgroups.worst_group(labels, probs, {"site": site, "shift": shift})["worst_group_accuracy"] == pytest.approx(
        min(0.5, np.mean(probs[shift == "x"].argmax(1) == labels[shift == "x"]),
            np.mean(probs[shift == "y"].argmax(1) == labels[shift == "y"])))
    # No group large enough (a small validation split): every group counts.
    assert subgroups.worst_group(labels[-3:], probs[-3:], {"site": site[-3:]})["worst_group_accuracy"] == 0.0


def test_a_sweep_can_optimise_the_worst_group(tmp_path, monkeypatch):
    from medsweep.search import sweep
    from medsweep.training import trial
    from tests.conftest import TINY

    path = tmp_path / "notes.csv"
    rows = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv").head(200)
    rows["site"] = np.array(["north", "south"])[np.arange(len(rows)) % 2]
    # A copy of the label as a group column: if predictions and group values were out of step
    # (the Trainer may reorder evaluation batches), a group would no longer hold a single label.
    rows["copy"] = rows["condition_label"]
    rows.to_csv(path, index=False)
    overrides = TINY + ["data=csv", f"data.path={path}", "data.text_column=medical_abstract",
                        "data.label_column=condition_label", "trainer.epochs=1", "trainer.eval_every_steps=3"]
    with pytest.raises(ConfigError, match="needs data.group_columns"):
        sweep.check_metric_names(compose_config(overrides + ["sweep.metric=val_worst_group_f1_macro"]))
    config = compose_config(overrides + ["data.group_columns=[site,copy]", "sweep.metric=val_worst_group_f1_macro"],
                            run_dir=tmp_path)
    sweep.check_metric_names(config, 5)
    splits = data.load_splits(config["data"])
    scored = []
    real = trial.compute_metrics

    def spy(prediction, groups=None):
        scores = real(prediction, groups)
        scored.append((prediction.label_ids, groups, scores))
        return scores

    monkeypatch.setattr(trial, "compute_metrics", spy)
    result = trial.run_trial(config)
    assert len(result["history"]) == len(scored) >= 2
    for (label_ids, groups, scores), report in zip(scored, result["history"]):
        assert len(label_ids) == len(groups["copy"]) == len(splits.validation)
        assert all(len(set(label_ids[groups["copy"] == value])) == 1 for value in set(groups["copy"]))
        assert sorted(groups["site"]) == sorted(splits.validation[data.GROUP_PREFIX + "site"])
        assert report["val_worst_group_f1_macro"] == pytest.approx(scores["worst_group_f1_macro"])
        # The two sites are large, so the worst group is at most the overall (their weighted mean).
        assert report["val_worst_group_accuracy"] <= report["val_accuracy"] + 1e-9
    assert result["best"]["val_worst_group_f1_macro"] == max(r["val_worst_group_f1_macro"] for r in result["history"])
