"""Load a labelled text data set, clean it, and split it train/validation/test without leakage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from medsweep.config import ConfigError

BUILTIN_PREFIX = "builtin:"
# Data sets shipped inside the package (see medsweep/resources/ATTRIBUTION.md for licenses).
BUILTIN_FILES = {
    "medical_abstracts": "medical_abstracts.csv.gz",
    "medical_abstracts_labels": "medical_abstracts_labels.csv",
}
SPLITS = ("train", "validation", "test")


@dataclass
class DataSplits:
    """Cleaned splits with columns `text`, optional `text_pair`, and integer `label`."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]
    summary: dict = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: fingerprint(self.split(name)) for name in SPLITS}


def resolve_path(path: str) -> Path:
    """A file path, or `builtin:NAME` for a data file shipped with medsweep."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_FILES:
            raise ConfigError(f"unknown built-in data file {path!r}; known: {sorted(BUILTIN_FILES)}")
        return Path(str(resources.files("medsweep.resources") / BUILTIN_FILES[name]))
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(f"data file not found: {path}")
    if resolved.is_dir():
        raise ConfigError(f"data path is a directory, expected a file: {path}")
    return resolved


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            # dtype=str keeps labels such as "01" or "yes" exactly as written; keep_default_na=False
            # keeps an empty text as "" (dropped by cleaning, and counted) rather than NaN.
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"could not read {path} as {fmt}: {str(exc).splitlines()[0]}") from None
    raise ConfigError(f"data.format must be csv or jsonl, got {fmt!r}")


def read_label_names(path: str) -> dict[str, str]:
    table = pd.read_csv(resolve_path(path), dtype=str)
    if table.shape[1] < 2:
        raise ConfigError(f"{path}: a label-names file needs two columns (label value, label name)")
    return dict(zip(table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip()))


def load_frame(cfg: dict) -> tuple[pd.DataFrame, list[str]]:
    """Read the configured file into columns text[, text_pair], label (int) and the label names."""
    if not cfg["path"]:
        raise ConfigError("data.path is not set: point it at a CSV or JSONL file")
    raw = read_table(resolve_path(cfg["path"]), cfg["format"])
    wanted = [cfg["text_column"], cfg["label_column"]] + ([cfg["text_pair_column"]] if cfg["text_pair_column"] else [])
    for column in wanted:
        if column not in raw.columns:
            raise ConfigError(f"column {column!r} not found in {cfg['path']}; columns are {list(raw.columns)}")
    frame = pd.DataFrame({
        "text": raw[cfg["text_column"]].astype(str),
        "label": raw[cfg["label_column"]].astype(str).str.strip(),
    })
    if cfg["text_pair_column"]:
        frame["text_pair"] = raw[cfg["text_pair_column"]].astype(str)

    values = sorted(frame["label"].unique(), key=_label_sort_key)
    names = read_label_names(cfg["label_names_path"]) if cfg["label_names_path"] else {}
    label_names = [names.get(v, v) for v in values]
    frame["label"] = frame["label"].map({v: i for i, v in enumerate(values)}).astype(int)
    return frame, label_names


def _label_sort_key(value: str):
    # Numeric labels sort as numbers (2 before 10), then anything else alphabetically.
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop empty texts, texts that carry conflicting labels, and exact duplicates."""
    key = ["text", "text_pair"] if "text_pair" in frame.columns else ["text"]
    summary = {"rows_read": int(len(frame))}
    stripped = frame["text"].str.strip()
    frame = frame[stripped != ""].copy()
    summary["empty_texts_dropped"] = summary["rows_read"] - len(frame)

    # A text labelled two ways cannot be learned or scored honestly: drop every copy of it.
    labels_per_text = frame.groupby(key)["label"].transform("nunique")
    conflicting = frame[labels_per_text > 1]
    summary["conflicting_texts_dropped"] = int(conflicting[key].drop_duplicates().shape[0])
    summary["conflicting_rows_dropped"] = int(len(conflicting))
    frame = frame[labels_per_text == 1]

    before = len(frame)
    frame = frame.drop_duplicates(subset=key + ["label"]).reset_index(drop=True)
    summary["duplicates_removed"] = before - len(frame)
    summary["rows_kept"] = int(len(frame))
    return frame, summary


def split(frame: pd.DataFrame, cfg: dict, num_labels: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified train/validation/test split with a fixed seed."""
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        raise ConfigError(f"the label column {cfg['label_column']!r} has only one class after cleaning")
    # Each split needs at least one example of every class for stratification to work.
    min_needed = 3
    if counts.min() < min_needed:
        raise ConfigError(
            f"too few rows to split: class with {counts.min()} row(s), need at least {min_needed} per class"
        )
    holdout = cfg["val_fraction"] + cfg["test_fraction"]
    try:
        train, rest = train_test_split(frame, test_size=holdout, stratify=frame["label"], random_state=cfg["seed"])
        test_share = cfg["test_fraction"] / holdout
        validation, test = train_test_split(rest, test_size=test_share, stratify=rest["label"], random_state=cfg["seed"])
    except ValueError as exc:
        raise ConfigError(f"could not split the data: {exc}") from None
    return train.reset_index(drop=True), validation.reset_index(drop=True), test.reset_index(drop=True)


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified subset of at most `limit` rows (debug and budget runs)."""
    if limit is None or len(frame) <= limit:
        return frame
    num_classes = frame["label"].nunique()
    if limit < num_classes:
        return frame.sample(n=limit, random_state=seed).reset_index(drop=True)
    kept, _ = train_test_split(frame, train_size=limit, stratify=frame["label"], random_state=seed)
    return kept.reset_index(drop=True)


def load_splits(cfg: dict) -> DataSplits:
    frame, label_names = load_frame(cfg)
    frame, summary = clean(frame)
    if frame.empty:
        raise ConfigError(f"no usable rows in {cfg['path']} after dropping empty texts and conflicting labels")
    train, validation, test = split(frame, cfg, len(label_names))
    train = subsample(train, cfg["max_train_samples"], cfg["seed"])
    validation = subsample(validation, cfg["max_eval_samples"], cfg["seed"])
    summary["split_sizes"] = {"train": len(train), "validation": len(validation), "test": len(test)}
    summary["class_counts"] = {
        name: {label_names[k]: int(v) for k, v in sorted(part["label"].value_counts().items())}
        for name, part in zip(SPLITS, (train, validation, test))
    }
    splits = DataSplits(train, validation, test, label_names, summary)
    summary["fingerprints"] = splits.fingerprints
    return splits


def fingerprint(frame: pd.DataFrame) -> str:
    """Order-independent hash of a split's rows, recorded with every trial and promoted model."""
    columns = [c for c in ("text", "text_pair", "label") if c in frame.columns]
    rows = sorted("\x1f".join(str(v) for v in row) for row in frame[columns].itertuples(index=False))
    return hashlib.sha256("\x1e".join(rows).encode()).hexdigest()[:16]
