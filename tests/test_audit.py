"""Subgroup audit: per-group numbers against a hand computation; group columns and their errors."""

import numpy as np
import pandas as pd
import pytest

from medsweep import audit, data
from medsweep.config import ConfigError, validate
from tests.conftest import compose_config


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

    report = audit.subgroup_report(labels, probs, groups, n_resamples=200, seed=0)
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
        for metric in audit.AUDIT_METRICS:
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
    report = audit.subgroup_report(labels, probs, {"sex": np.array(["f"] * 20 + ["m"] * 2)}, n_resamples=100)
    assert report["columns"]["sex"]["largest_gap"] is None
    assert report["largest_gap"] is None
    lines = "\n".join(audit.audit_lines(report))
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
        assert list(audit.group_columns(part)) == ["site"]
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
