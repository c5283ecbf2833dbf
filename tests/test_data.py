import pandas as pd
import pytest

from medsweep import data
from medsweep.config import ConfigError
from tests.conftest import SHARED_DATA, compose_config

MEDICAL_ABSTRACTS = SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv"


@pytest.fixture(scope="module")
def default_data_cfg():
    return compose_config()["data"]


@pytest.fixture(scope="module")
def splits(default_data_cfg):
    return data.load_splits(default_data_cfg)


def test_embedded_copy_is_the_shared_file():
    shipped = data.read_table(data.resolve_path("builtin:medical_abstracts"), "csv")
    original = pd.read_csv(MEDICAL_ABSTRACTS, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(shipped, original)


def test_cleaning_drops_the_113_conflicting_texts(splits):
    summary = splits.summary
    assert summary["rows_read"] == 2888
    assert summary["conflicting_texts_dropped"] == 113
    original = pd.read_csv(MEDICAL_ABSTRACTS)
    per_text = original.groupby("medical_abstract")["condition_label"].nunique()
    conflicting = set(per_text[per_text > 1].index)
    kept = pd.concat([splits.train, splits.validation, splits.test])
    assert not conflicting & set(kept["text"])
    assert kept["text"].is_unique
    assert len(kept) == summary["rows_kept"] == 2888 - summary["conflicting_rows_dropped"]


def test_splits_are_disjoint_stratified_and_seeded(splits, default_data_cfg):
    train, val, test = (set(s["text"]) for s in (splits.train, splits.validation, splits.test))
    assert not (train & val) and not (train & test) and not (val & test)
    total = sum(summary for summary in splits.summary["split_sizes"].values())
    assert splits.summary["split_sizes"]["test"] / total == pytest.approx(0.15, abs=0.01)
    # Stratified: every class keeps its share in every split (within a point or two).
    overall = pd.concat([splits.train, splits.validation, splits.test])["label"].value_counts(normalize=True)
    for part in (splits.train, splits.validation, splits.test):
        share = part["label"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.02
    again = data.load_splits(default_data_cfg)
    assert again.fingerprints == splits.fingerprints
    reseeded = data.load_splits(dict(default_data_cfg, seed=1))
    assert reseeded.fingerprints["test"] != splits.fingerprints["test"]


def test_label_names_come_from_the_labels_file(splits):
    assert splits.label_names == [
        "neoplasms", "digestive system diseases", "nervous system diseases",
        "cardiovascular diseases", "general pathological conditions",
    ]
    assert sorted(splits.train["label"].unique()) == [0, 1, 2, 3, 4]


def test_max_train_samples_subsamples_train_only(default_data_cfg, splits):
    small = data.load_splits(dict(default_data_cfg, max_train_samples=100))
    assert len(small.train) == 100 and small.train["label"].nunique() == 5
    assert small.fingerprints["test"] == splits.fingerprints["test"]
    assert set(small.train["text"]) <= set(splits.train["text"])


def test_user_csv_with_text_pairs_and_string_labels(tmp_path, default_data_cfg):
    rows = [{"q": f"question {i}", "ctx": f"context number {i}", "answer": ["yes", "no", "maybe"][i % 3]} for i in range(30)]
    rows.append({"q": "  ", "ctx": "blank question", "answer": "yes"})
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = dict(default_data_cfg, path=str(path), text_column="q", text_pair_column="ctx", label_column="answer",
               label_names_path=None, val_fraction=0.2, test_fraction=0.2)
    splits = data.load_splits(cfg)
    assert splits.label_names == ["maybe", "no", "yes"]
    assert "text_pair" in splits.train.columns
    assert splits.summary["empty_texts_dropped"] == 1


def test_missing_column_names_the_column_and_lists_those_found(tmp_path, default_data_cfg):
    path = tmp_path / "notes.csv"
    pd.DataFrame({"note": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"column 'text' not found .*\['note', 'label'\]"):
        data.load_splits(dict(default_data_cfg, path=str(path), text_column="text", label_column="label"))


def test_missing_file_and_directory_are_clear_errors(tmp_path, default_data_cfg):
    with pytest.raises(ConfigError, match="data file not found"):
        data.load_splits(dict(default_data_cfg, path=str(tmp_path / "nope.csv")))
    with pytest.raises(ConfigError, match="is a directory"):
        data.load_splits(dict(default_data_cfg, path=str(tmp_path)))
