"""Clinicians' feedback as training rows (`data.feedback=<feedback.sqlite or exported CSV>`).

The rows POST /feedback kept (the text the model saw and the label a clinician says is right) are
added to the TRAINING split only: validation and test stay the rows every earlier model was chosen
and scored on, so a retrained model can be compared with the one it replaces on the same test rows
(promote.gate). A feedback text already in any split (by normalised text: case and runs of
whitespace ignored) or given twice is dropped: a test row fed back as training would make the test
score a memory test, and a text given twice would count twice. Of a text given twice, the latest
feedback is kept (a clinician's later correction wins).

Feedback rows are trained on in full, on top of data.max_train_samples (a debug/budget cap of the
original data): they are few, and they are what the retrain is for.

Two sources: the feedback database itself (SQLite; its schema is medsweep/serving/feedback.py's,
read here through the three columns a training row needs: text, text_pair, right_label), opened
read-only; or the CSV `python -m medsweep.feedback export` writes (columns text, right_label,
optional text_pair; its formula-guard quote before =, +, -, @ is taken off again). Anything else,
a missing column or a label the task does not have is one ConfigError line.
"""

from __future__ import annotations

import re
import sqlite3

import pandas as pd

from medsweep.config import ConfigError
from medsweep.data.deid import deidentify_frame
from medsweep.data.formats import resolve_path

SQLITE_MAGIC = b"SQLite format 3\x00"
REQUIRED = ("text", "right_label")
# What `medsweep.feedback export` puts before a cell a spreadsheet would run as a formula.
FORMULA_GUARD = ("'=", "'+", "'-", "'@", "'\t", "'\r")
# A feedback row's value in each data.group_columns column: data.splits.MISSING_GROUP (not imported:
# splits calls this module; tests/data/test_feedback_rows.py checks they agree).
NO_GROUP = "(missing)"


def read_feedback(path: str) -> pd.DataFrame:
    """text, text_pair (or None), right_label of every feedback row, oldest first."""
    file = resolve_path(path, "feedback file (data.feedback)")
    with open(file, "rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        # mode=ro: a retrain never creates, migrates or writes the service's database.
        try:
            connection = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
            try:
                rows = connection.execute("SELECT text, text_pair, right_label FROM feedback ORDER BY id").fetchall()
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"data.feedback={path}: not a medsweep feedback database ({exc})") from None
        return pd.DataFrame(rows, columns=["text", "text_pair", "right_label"])
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.feedback={path}: neither a feedback database nor a readable CSV "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise ConfigError(f"data.feedback={path}: column {missing[0]!r} not found; a feedback CSV needs "
                          f"{list(REQUIRED)} (as `python -m medsweep.feedback export` writes it), has {list(frame.columns)}")
    columns = [c for c in ("text", "text_pair", "right_label") if c in frame.columns]
    frame = frame[columns].apply(lambda column: column.map(unguard))
    if "text_pair" not in frame.columns:
        frame["text_pair"] = None
    return frame.replace({"text_pair": {"": None}})


def unguard(value: str) -> str:
    return value[1:] if isinstance(value, str) and value.startswith(FORMULA_GUARD) else value


def normalised(frame: pd.DataFrame, pair: bool) -> pd.Series:
    """The duplicate key: case and whitespace runs ignored (a pasted note differs in nothing else)."""
    def norm(series: pd.Series) -> pd.Series:
        return series.fillna("").astype(str).map(lambda t: re.sub(r"\s+", " ", t).strip().casefold())

    key = norm(frame["text"])
    return key + "\x1f" + norm(frame["text_pair"]) if pair else key


def add_feedback(cfg: dict, label_names: list[str], train: pd.DataFrame, unsampled_train: pd.DataFrame,
                 held_out: list[pd.DataFrame], summary: dict, notes: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, unsampled train) with the feedback rows of data.feedback appended (none: unchanged).
    `held_out`: validation and test before any cap, so no copy of them is trained on. Records
    summary["feedback"] and one note for the printed data summary."""
    if not cfg.get("feedback"):
        return train, unsampled_train
    path = cfg["feedback"]
    rows = read_feedback(path)
    pair = "text_pair" in train.columns
    codes = {name: i for i, name in enumerate(label_names)}
    unknown = ~rows["right_label"].isin(list(codes))
    if unknown.any():
        first = int(unknown.to_numpy().nonzero()[0][0])
        raise ConfigError(f"data.feedback={path}: row {first + 1} has the label {rows['right_label'].iloc[first]!r}, "
                          f"which this task does not have (labels: {label_names})")
    if pair and rows["text_pair"].isna().any():
        first = int(rows["text_pair"].isna().to_numpy().nonzero()[0][0])
        raise ConfigError(f"data.feedback={path}: row {first + 1} has no text_pair, which this pair task needs")
    frame = pd.DataFrame({"text": rows["text"].fillna("").astype(str).str.strip(),
                          "label": rows["right_label"].map(codes).astype(int)})
    if pair:
        frame["text_pair"] = rows["text_pair"].astype(str).str.strip()
    masked = None
    if cfg.get("deidentify"):
        # As the data layer masks every row it reads; rows the service already masked stay as they are.
        frame, masked = deidentify_frame(frame)
    read = len(frame)
    frame = frame[frame["text"] != ""]
    empty = read - len(frame)
    keys = normalised(frame, pair)
    seen = set()
    for part in [unsampled_train, *held_out]:
        seen.update(normalised(part, pair))
    in_splits = keys.isin(seen)
    # Of a text given twice the latest feedback is kept.
    repeated = keys.duplicated(keep="last") & ~in_splits
    added = frame[~in_splits & ~repeated].reset_index(drop=True)
    for column in train.columns:
        if column not in added.columns:  # group columns (data.group_columns): the feedback rows have none
            added[column] = NO_GROUP
    added = added[list(train.columns)]
    record = {"source": str(path), "rows_read": int(read), "empty_dropped": int(empty),
              "duplicates_of_splits_dropped": int(in_splits.sum()), "repeats_dropped": int(repeated.sum()),
              "added_to_train": int(len(added))}
    if masked is not None:
        record["deidentified"] = masked
    summary["feedback"] = record
    notes.append(f"data.feedback: {record['added_to_train']} feedback row(s) added to the training split only; "
                 f"{record['duplicates_of_splits_dropped']} dropped as already in a split, "
                 f"{record['repeats_dropped']} as repeats, {empty} empty")
    if unsampled_train is train:
        train = unsampled_train = pd.concat([train, added], ignore_index=True)
        return train, unsampled_train
    return (pd.concat([train, added], ignore_index=True), pd.concat([unsampled_train, added], ignore_index=True))
