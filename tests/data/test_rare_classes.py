"""Rare classes on real rows: the Medical Abstracts test file relabelled into a 23-class corpus whose
tail classes have a handful of rows (and one of a single row), as real clinical corpora do. The
splits and the subsamples keep every class they can and say what they did, or stop in one line
naming the class; they never crash (they used to, inside the stratified subsample of
`+sweep=lr_lora`'s data.max_eval_samples)."""

import pandas as pd
import pytest

from medsweep import data
from medsweep.config import ConfigError
from medsweep.data.splits import subsample
from medsweep.search import sweep
from tests.conftest import SHARED_DATA, compose_config

# Rows per tail class: 18 classes of real abstracts share the rest.
TAIL = {"rare_a": 3, "rare_b": 3, "rare_c": 4, "rare_d": 5, "rare_e": 6}


def rare_corpus(path, singleton: bool = False, split_column: bool = False):
    """Real abstracts, 23 classes: 18 from (original label x abstract length bucket), 5 rare ones
    taken from the first rows; with `singleton`, one more class of a single row."""
    rows = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv").drop_duplicates("medical_abstract",
                                                                                                  keep=False)
    rows = rows.sample(n=900, random_state=0).reset_index(drop=True)
    bucket = pd.qcut(rows["medical_abstract"].str.len(), 4, labels=False)
    rows["label"] = [f"c{c}_{b}" for c, b in zip(rows["condition_label"], bucket)]
    rows = rows[rows["label"].isin(sorted(rows["label"].unique())[:18])].reset_index(drop=True)
    start = 0
    for name, n in {**TAIL, **({"singleton": 1} if singleton else {})}.items():
        rows.loc[start:start + n - 1, "label"] = name
        start += n
    if split_column:
        rows["part"] = "train"
        rows.loc[rows.index[-150:], "part"] = "validation"
        rows.loc[rows.index[-300:-150], "part"] = "test"
        # A tail class with one row in the given validation split (the crash: it cannot be stratified).
        rows.loc[rows.index[-1], "label"] = "rare_e"
    rows[["medical_abstract", "label"] + (["part"] if split_column else [])].to_csv(path, index=False)
    return path


def cfg_for(path, **extra):
    cfg = compose_config(["data=csv", f"data.path={path}", "data.text_column=medical_abstract",
                          "data.label_column=label", "data.max_train_samples=300", "data.max_eval_samples=60"])["data"]
    return dict(cfg, **extra)


def test_rare_classes_are_kept_in_every_split_they_can_be(tmp_path):
    splits = data.load_splits(cfg_for(rare_corpus(tmp_path / "rare.csv")))
    assert len(splits.label_names) == 23
    # Every class trains, the subsamples included; a class of 3 rows cannot be in validation AND test.
    assert splits.train["label"].nunique() == 23 and len(splits.train) == 300
    assert len(splits.validation) == 60
    assert splits.summary["class_counts"]["validation"].keys() >= {"rare_d", "rare_e"}
    notes = " ".join(splits.summary["notes"])
    assert "single row" in notes and "data.max_eval_samples=60" in notes
    assert "note: " in data.describe(splits.summary)


def test_given_splits_with_a_one_row_class_subsample_without_crashing(tmp_path):
    splits = data.load_splits(cfg_for(rare_corpus(tmp_path / "given.csv", split_column=True), split_column="part"))
    counts = splits.summary["class_counts"]["validation"]
    assert len(splits.validation) == 60 and counts["rare_e"] == 1  # the one row kept whole
    assert "all" in " ".join(splits.summary["notes"])


def test_a_class_of_one_row_stops_the_split_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"class 'singleton' has 1 row\(s\), need at least 3") as info:
        data.load_splits(cfg_for(rare_corpus(tmp_path / "one.csv", singleton=True)))
    assert "\n" not in str(info.value)


def test_a_subsample_smaller_than_the_classes_names_one(tmp_path):
    with pytest.raises(ConfigError, match=r"data.max_eval_samples=10 is below the number of classes here"):
        data.load_splits(cfg_for(rare_corpus(tmp_path / "rare.csv"), max_eval_samples=10))


def test_subsample_keeps_every_class_and_the_budget():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(200)],
                          "label": [0] * 150 + [1] * 40 + [2] * 7 + [3, 3] + [4]})
    for limit in (5, 6, 17, 60, 199):
        kept = subsample(frame, limit, seed=0)
        assert len(kept) == limit and kept["label"].nunique() == 5 and kept["text"].is_unique
    assert subsample(frame, 60, 0).equals(subsample(frame, 60, 0))  # seeded


def test_lr_lora_preflight_on_the_rare_corpus(tmp_path):
    """The reported crash: +sweep=lr_lora (data.max_eval_samples=200) on a corpus with rare classes."""
    path = rare_corpus(tmp_path / "rare.csv", split_column=True)
    config = compose_config(["+sweep=lr_lora", "model=tiny_random", "data=csv", f"data.path={path}",
                             "data.text_column=medical_abstract", "data.label_column=label", "data.split_column=part",
                             "data.max_eval_samples=100"], run_dir=tmp_path)
    plan = sweep.preflight(config)
    splits = plan.splits
    assert len(splits.validation) == 100 and splits.summary["class_counts"]["validation"]["rare_e"] == 1
