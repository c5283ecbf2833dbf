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


# --- PubMedQA (the real release in ../shared/data and the shipped copy) --------------------------

PUBMEDQA = SHARED_DATA / "pubmedqa"


@pytest.fixture(scope="module")
def pubmedqa():
    return data.load_splits(compose_config(["data=pubmedqa"])["data"])


def test_pubmedqa_holds_out_exactly_the_official_test_set(pubmedqa):
    import json

    items = json.loads((PUBMEDQA / "ori_pqal.json").read_text())
    truth = json.loads((PUBMEDQA / "test_ground_truth.json").read_text())
    assert pubmedqa.summary["rows_read"] == len(items) == 1000
    assert pubmedqa.summary["rows_kept"] == 1000  # nothing empty, duplicated or conflicting in PQA-L
    # The test split is the 500 official items, question and label for question and label.
    by_question = {item["QUESTION"].strip(): pmid for pmid, item in items.items()}
    test = pubmedqa.test
    test_pmids = {by_question[q] for q in test["text"]}
    assert len(test) == 500 and test_pmids == set(truth)
    names = pubmedqa.label_names
    assert all(names[label] == truth[by_question[q]] for q, label in zip(test["text"], test["label"]))
    # Each item's context is its CONTEXTS paragraphs, joined.
    row = test.iloc[0]
    assert row["text_pair"] == " ".join(c.strip() for c in items[by_question[row["text"]]]["CONTEXTS"])


def test_pubmedqa_train_and_validation_are_the_other_500_stratified(pubmedqa):
    train, val = pubmedqa.train, pubmedqa.validation
    assert (len(train), len(val)) == (400, 100)  # val_fraction 0.2 of the 500 non-test items
    assert pubmedqa.label_names == ["maybe", "no", "yes"]
    pool = pd.concat([train, val])
    assert pool["label"].value_counts().to_dict() == {2: 276, 1: 169, 0: 55}  # 552/338/110 minus the test set
    for part in (train, val):
        share = part["label"].value_counts(normalize=True)
        assert (share - pool["label"].value_counts(normalize=True)).abs().max() < 0.02
    keys = [set(zip(p["text"], p["text_pair"])) for p in (train, val, pubmedqa.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert pubmedqa.summary["split_source"] == "split_column"
    reseeded = data.load_splits(dict(compose_config(["data=pubmedqa"])["data"], seed=3))
    assert reseeded.fingerprints["test"] == pubmedqa.fingerprints["test"]  # the official test set never moves
    assert reseeded.fingerprints["train"] != pubmedqa.fingerprints["train"]


def test_shipped_pubmedqa_matches_the_release():

    from experiments.build_pubmedqa_resource import build

    shipped = data.read_table(data.resolve_path("builtin:pubmedqa"), "jsonl")
    assert shipped.to_dict("records") == build(PUBMEDQA)
    assert "LONG_ANSWER" not in shipped.columns  # it states the answer


# --- formats and given splits -------------------------------------------------------------------

def rows(n: int, prefix: str = "note", labels=("a", "b")) -> list[dict]:
    return [{"text": f"{prefix} {i}", "label": labels[i % len(labels)]} for i in range(n)]


@pytest.fixture(scope="module")
def csv_cfg():
    return compose_config(["data=csv"])["data"]


def data_cfg(base: dict, **overrides) -> dict:
    """`base` (the data=csv defaults) with these keys set."""
    return dict(base, **overrides)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_file_format_loads_the_same_rows(tmp_path, csv_cfg, fmt):
    frame = pd.DataFrame(rows(40))
    path = tmp_path / f"notes.{fmt}"
    {"csv": lambda: frame.to_csv(path, index=False), "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    splits = data.load_splits(data_cfg(csv_cfg, path=str(path), format=fmt))
    assert splits.summary["rows_kept"] == 40 and splits.label_names == ["a", "b"]
    assert splits.summary["split_sizes"] == {"train": 28, "validation": 6, "test": 6}


def test_split_column_keeps_the_given_test_set_and_draws_validation_from_train(tmp_path, csv_cfg):
    frame = pd.DataFrame(rows(60))
    frame["part"] = ["TEST" if i % 4 == 0 else "train" for i in range(60)]
    path = tmp_path / "notes.csv"
    frame.to_csv(path, index=False)
    splits = data.load_splits(data_cfg(csv_cfg, path=str(path), split_column="part", val_fraction=0.2))
    assert set(splits.test["text"]) == set(frame.loc[frame["part"] == "TEST", "text"])
    assert (len(splits.train), len(splits.validation)) == (36, 9)


def test_one_file_per_split_and_a_text_leaked_into_test_is_kept_only_in_test(tmp_path, csv_cfg):
    train, test = pd.DataFrame(rows(40)), pd.DataFrame(rows(10, prefix="held-out"))
    train.loc[len(train)] = {"text": "held-out 3", "label": "b"}  # the same example in train and test
    train.loc[len(train)] = {"text": "note 5", "label": "b"}  # an exact duplicate inside train
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    cfg = data_cfg(csv_cfg, path=None, train_path=str(tmp_path / "train.csv"),
                   test_path=str(tmp_path / "test.csv"), val_fraction=0.25)
    splits = data.load_splits(cfg)
    assert set(splits.test["text"]) == set(test["text"])
    assert "held-out 3" not in set(splits.train["text"]) | set(splits.validation["text"])
    assert splits.summary["duplicates_removed"] == 2 and splits.summary["cross_split_duplicates_removed"] == 1
    assert (len(splits.train), len(splits.validation)) == (30, 10)
    assert splits.summary["split_source"] == "files"


def test_pair_task_same_question_with_another_context_is_a_different_example(tmp_path, csv_cfg):
    frame = pd.DataFrame([{"q": f"question {i % 10}", "ctx": f"context {i}", "y": "yes" if i % 2 else "no"} for i in range(40)])
    frame.loc[len(frame)] = {"q": "question 1", "ctx": "context 1", "y": "no"}  # conflicts with row 1
    path = tmp_path / "pairs.jsonl"
    frame.to_json(path, orient="records", lines=True)
    splits = data.load_splits(data_cfg(csv_cfg, path=str(path), format="jsonl", text_column="q",
                                       text_pair_column="ctx", label_column="y"))
    assert splits.summary["conflicting_texts_dropped"] == 1 and splits.summary["conflicting_rows_dropped"] == 2
    assert splits.summary["rows_kept"] == 39
    kept = pd.concat([splits.train, splits.validation, splits.test])
    assert not ((kept["text"] == "question 1") & (kept["text_pair"] == "context 1")).any()
    assert (kept["text"] == "question 1").sum() == 3  # the same question with other contexts stays


def test_hf_local_dataset_folders_keep_their_splits_and_class_names(tmp_path, csv_cfg):
    import datasets

    features = datasets.Features({"note": datasets.Value("string"), "dx": datasets.ClassLabel(names=["benign", "malignant"])})
    parts = {name: datasets.Dataset.from_dict({"note": [f"{name} note {i}" for i in range(n)], "dx": [i % 2 for i in range(n)]},
                                              features=features) for name, n in [("train", 40), ("test", 12)]}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    cfg = data_cfg(csv_cfg, path=str(tmp_path / "saved"), format="hf", text_column="note", label_column="dx")
    splits = data.load_splits(cfg)
    assert splits.label_names == ["benign", "malignant"]
    assert len(splits.test) == 12 and set(splits.test["text"]) == {f"test note {i}" for i in range(12)}
    assert splits.summary["split_source"] == "dataset_splits" and len(splits.validation) == 6

    # A folder of plain data files, read by datasets.load_dataset (split names from the file names).
    folder = tmp_path / "files"
    folder.mkdir()
    pd.DataFrame(rows(40)).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows(8, prefix="dev")).to_csv(folder / "validation.csv", index=False)
    pd.DataFrame(rows(8, prefix="exam")).to_csv(folder / "test.csv", index=False)
    splits = data.load_splits(data_cfg(csv_cfg, path=str(folder), format="hf"))
    assert splits.summary["split_sizes"] == {"train": 40, "validation": 8, "test": 8}


def test_summary_lines_report_counts_and_fingerprints_but_no_text(splits):
    text = data.describe(splits.summary)
    assert "2888 rows read" in text and "113 texts with conflicting labels" in text
    assert all(splits.fingerprints[name] in text for name in data.SPLITS)
    assert f"neoplasms {splits.summary['class_counts']['test']['neoplasms']}" in text
    assert not any(sample[:40] in text for sample in splits.train["text"].head(50))


def test_a_blank_row_counts_as_an_empty_text_not_a_missing_label(tmp_path, csv_cfg):
    path = tmp_path / "notes.csv"
    path.write_text("text,label\n" + "".join(f"note {i},{'ab'[i % 2]}\n" for i in range(20)) + ",\n")
    splits = data.load_splits(data_cfg(csv_cfg, path=str(path)))
    assert splits.summary["rows_read"] == 21 and splits.summary["empty_texts_dropped"] == 1


# --- data.calibration_fraction (issue 27: rows that fit T, the decision rule and the conformal threshold) ---

def test_calibration_fraction_carves_training_rows_only_stratified_and_seeded(default_data_cfg, splits):
    carved = data.load_splits(dict(default_data_cfg, calibration_fraction=0.2))
    calibration, train = carved.calibration, carved.train
    # Only the training rows give: validation and test are the very same rows as without it.
    assert carved.fingerprints["validation"] == splits.fingerprints["validation"]
    assert carved.fingerprints["test"] == splits.fingerprints["test"]
    assert set(calibration["text"]) | set(train["text"]) == set(splits.train["text"])
    parts = [set(p["text"]) for p in (train, carved.validation, carved.test)]
    assert all(not (set(calibration["text"]) & part) for part in parts)
    assert len(calibration) == pytest.approx(0.2 * len(splits.train), abs=1)
    overall = splits.train["label"].value_counts(normalize=True)
    assert (calibration["label"].value_counts(normalize=True) - overall).abs().max() < 0.02
    assert carved.held_out_for_calibration == ("calibration", calibration)
    assert splits.held_out_for_calibration[0] == "validation" and splits.calibration is None
    summary = carved.summary
    assert summary["split_sizes"]["calibration"] == len(calibration)
    assert summary["fingerprints"]["calibration"] == data.fingerprint(calibration)
    assert f"+ {len(calibration)} calibration" in data.describe(summary)
    # Seeded: the same rows again, other rows with another data.seed.
    again = data.load_splits(dict(default_data_cfg, calibration_fraction=0.2))
    assert data.fingerprint(again.calibration) == summary["fingerprints"]["calibration"]
    other = data.load_splits(dict(default_data_cfg, calibration_fraction=0.2, seed=1))
    assert data.fingerprint(other.calibration) != summary["fingerprints"]["calibration"]


def test_calibration_rows_are_never_trained_on_by_a_search_or_a_refit(default_data_cfg):
    carved = data.load_splits(dict(default_data_cfg, calibration_fraction=0.1, max_train_samples=100))
    held = set(carved.calibration["text"])
    assert len(carved.train) == 100 and not held & set(carved.train["text"])
    refit = carved.as_configured(dict(default_data_cfg, calibration_fraction=0.1, max_train_samples=None))
    assert len(refit.train) > 100 and not held & set(refit.train["text"])
    assert refit.calibration is carved.calibration


def test_pubmedqa_calibration_rows_come_from_training_and_the_official_test_set_stays(pubmedqa):
    carved = data.load_splits(dict(compose_config(["data=pubmedqa"])["data"], calibration_fraction=0.2))
    assert (len(carved.train), len(carved.calibration), len(carved.validation)) == (320, 80, 100)
    assert carved.fingerprints["test"] == pubmedqa.fingerprints["test"]
    pairs = lambda frame: set(zip(frame["text"], frame["text_pair"]))  # noqa: E731
    assert pairs(carved.calibration) | pairs(carved.train) == pairs(pubmedqa.train)


@pytest.mark.parametrize("fraction", [0, 0.6, -0.1])
def test_a_bad_calibration_fraction_is_one_line_before_anything_runs(fraction):
    from medsweep.config import validate

    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"data.calibration_fraction={fraction}"]))
    message = str(info.value)
    assert "data.calibration_fraction must be in (0, 0.5] or null" in message and "\n" not in message
