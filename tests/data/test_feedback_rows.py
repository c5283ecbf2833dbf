"""data.feedback: clinicians' feedback rows (the service's SQLite database or its CSV export) reach
the training split only, deduplicated against every split and among themselves; a bad file is one line."""

import sqlite3

import pytest

from medsweep.config import ConfigError
from medsweep.data import load_splits
from medsweep.data.feedback_rows import NO_GROUP, read_feedback
from medsweep.data.splits import MISSING_GROUP
from medsweep.serving.feedback import FeedbackStore, Remembered, export_csv
from tests.conftest import TINY, compose_config

NEW = "Persistent cough and night sweats in a 40-year-old; chest film shows a cavitating lesion."
AGAIN = "Sudden painless loss of vision in one eye with a cherry-red spot at the macula."
NAMED = "Dr. Jane Smith reviewed the biopsy on 03/14/2021: squamous cell carcinoma of the tongue."


def data_config(**extra) -> dict:
    return {**compose_config(TINY)["data"], "deidentify": True, **extra}


def feedback_db(path, rows):
    """A real feedback database, written as POST /feedback writes it."""
    store = FeedbackStore(path)
    for i, (text, right) in enumerate(rows):
        store.add(f"p{i}", Remembered(text, None, "x", {}, "v001", (), False, "2026-01-01T00:00:00"), right)
    return path


def texts(frame) -> set[str]:
    return set(frame["text"])


@pytest.fixture(scope="module")
def base():
    """The splits without feedback, and rows already in each split (reused as duplicates)."""
    splits = load_splits(data_config())
    return splits, splits.test["text"].iloc[0], splits.validation["text"].iloc[0], splits.all_train["text"].iloc[0]


def test_feedback_reaches_training_only_and_duplicates_are_dropped(base, tmp_path):
    splits, in_test, in_validation, in_train = base
    names = splits.label_names
    db = feedback_db(tmp_path / "feedback.sqlite", [
        (NEW, names[0]), (AGAIN, names[1]), (AGAIN + "  ", names[2]),  # a repeat: the later label wins
        (NAMED, names[3]),  # masked as the data layer masks (data.deidentify=true)
        (in_test, names[0]), (in_validation.upper(), names[0]), ("  " + in_train.replace(" ", "   "), names[1]),
    ])
    fed = load_splits(data_config(feedback=str(db)))

    added = texts(fed.train) - texts(splits.train)
    assert added == {NEW, AGAIN, "Dr. [NAME] reviewed the biopsy on [DATE]: squamous cell carcinoma of the tongue."}
    row = fed.train[fed.train["text"] == AGAIN]
    assert row["label"].tolist() == [2]
    # Validation and test are the rows every earlier model was chosen and scored on, unchanged.
    assert fed.fingerprints["validation"] == splits.fingerprints["validation"]
    assert fed.fingerprints["test"] == splits.fingerprints["test"]
    assert fed.fingerprints["train"] != splits.fingerprints["train"]
    assert len(fed.train) == len(splits.train) + 3
    # Kept on top of data.max_train_samples, and in the rows a refit trains on.
    assert texts(fed.all_train) >= added and len(fed.all_train) == len(splits.all_train) + 3
    assert fed.summary["feedback"] == {
        "source": str(db), "rows_read": 7, "empty_dropped": 0, "duplicates_of_splits_dropped": 3,
        "repeats_dropped": 1, "added_to_train": 3, "deidentified": fed.summary["feedback"]["deidentified"]}
    assert fed.summary["feedback"]["deidentified"]["masked"]["name"] == 1
    assert any("3 feedback row(s) added to the training split only" in n for n in fed.summary["notes"])

    # The CSV `python -m medsweep.feedback export` writes gives the same rows (its formula guard undone).
    exported = tmp_path / "feedback.csv"
    export_csv(db, exported)
    assert load_splits(data_config(feedback=str(exported))).fingerprints == fed.fingerprints
    assert NO_GROUP == MISSING_GROUP


def test_a_formula_looking_text_survives_the_csv_export(base, tmp_path):
    splits = base[0]
    text = "-2 SD bone density at the hip; =fracture risk high"
    db = feedback_db(tmp_path / "f.sqlite", [(text, splits.label_names[0])])
    export_csv(db, tmp_path / "f.csv")
    assert "'-2 SD" in (tmp_path / "f.csv").read_text()
    assert text in texts(load_splits(data_config(feedback=str(tmp_path / "f.csv"))).train)


@pytest.mark.parametrize("content, message", [
    ("text,label\nA note.,Neoplasms\n", "column 'right_label' not found"),
    (b"\x00\x01\x02 not a csv \xff\xfe", "neither a feedback database nor a readable CSV"),
    ("sqlite-without-table", "not a medsweep feedback database"),
    (None, "feedback file (data.feedback) not found"),
])
def test_a_bad_feedback_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "feedback"
    if content == "sqlite-without-table":
        sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        read_feedback(str(path))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_an_unknown_label_stops_the_run_before_any_trial(tmp_path):
    """Through the CLI's own execute(): the plan is refused, nothing is trained or written."""
    from medsweep.run import execute

    bad = tmp_path / "bad.csv"
    bad.write_text("text,right_label\nA note.,Oncology-ish\n")
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as raised:
        execute(compose_config(TINY + [f"data.feedback={bad}"], run_dir=run_dir))
    assert "row 1 has the label 'Oncology-ish', which this task does not have" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (run_dir / "leaderboard.csv").exists() and not (run_dir / "ray").exists()
