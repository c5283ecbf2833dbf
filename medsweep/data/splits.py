"""Load a labelled text data set, clean it, and split it train/validation/test without leakage.

Where the data come from (one file, a split column, one file per split, a Hugging Face dataset) is
settled first: every row gets a split tag ("" when the split is still to be drawn). Cleaning then
runs over all rows at once, so a text cannot hide in two splits, and the missing splits are drawn
(stratified, seeded) from the training rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd
from sklearn.model_selection import train_test_split

from medsweep.config import ConfigError
from medsweep.data.deid import deidentify_frame
from medsweep.data.feedback_rows import add_feedback
from medsweep.data.formats import read_hf, read_table, resolve_path

SPLITS = ("train", "validation", "test")
# Split names as data sets spell them -> medsweep's names.
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
# Group columns (data.group_columns) ride along in the split frames under this prefix, so they follow
# every row through cleaning and splitting; trial.tokenize reads only text/text_pair/label, so they
# never reach the model.
GROUP_PREFIX = "group:"
MISSING_GROUP = "(missing)"
# A text found in two splits is kept in the most held-out one: an official test set stays whole.
SPLIT_PRIORITY = {"test": 0, "validation": 1, "train": 2, "": 3}


@dataclass
class DataSplits:
    """Cleaned splits with columns `text`, optional `text_pair`, and integer `label`."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]
    summary: dict = field(default_factory=dict)
    # The training split before data.max_train_samples (None: not capped), kept so that a refit on all
    # training rows needs no second read of the data (promotion/reruns.py).
    unsampled_train: pd.DataFrame | None = None
    # data.calibration_fraction: training rows carved out before anything trains (None: not asked).
    # No trial sees them; promotion fits the temperature, decision rule and conformal threshold on them.
    calibration: pd.DataFrame | None = None

    @property
    def held_out_for_calibration(self) -> tuple[str, pd.DataFrame]:
        """(name, rows) that promotion calibrates on: the calibration split, else the validation split."""
        return ("calibration", self.calibration) if self.calibration is not None else ("validation", self.validation)

    @property
    def all_train(self) -> pd.DataFrame:
        return self.train if self.unsampled_train is None else self.unsampled_train

    def as_configured(self, cfg: dict) -> "DataSplits":
        """These splits as `load_splits(cfg)` would return them for a data config that differs only in
        data.max_train_samples (a refit's None: every training row), without reading the data again."""
        if cfg.get("max_train_samples") is not None or self.unsampled_train is None:
            return self
        train = self.unsampled_train
        summary = {**self.summary,
                   "split_sizes": {**self.summary["split_sizes"], "train": len(train)},
                   "class_counts": {**self.summary["class_counts"],
                                    "train": {self.label_names[k]: int(v) for k, v in sorted(train["label"].value_counts().items())}},
                   "fingerprints": {**self.summary["fingerprints"], "train": fingerprint(train)}}
        notes = [note for note in self.summary.get("notes", []) if "data.max_train_samples" not in note]
        summary.pop("notes", None)
        if notes:
            summary["notes"] = notes
        return DataSplits(train, self.validation, self.test, self.label_names, summary, calibration=self.calibration)

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: fingerprint(self.split(name)) for name in SPLITS}


def read_label_names(path: str) -> dict[str, str]:
    table = pd.read_csv(resolve_path(path), dtype=str)
    if table.shape[1] < 2:
        raise ConfigError(f"{path}: a label-names file needs two columns (label value, label name)")
    return dict(zip(table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip()))


# --- reading ------------------------------------------------------------------------------------

def read_sources(cfg: dict) -> tuple[list[tuple[str, str, pd.DataFrame]], str]:
    """[(source name, split tag, raw rows)] and how the splits are decided."""
    per_split = {"train": cfg["train_path"], "validation": cfg["validation_path"], "test": cfg["test_path"]}
    if any(per_split.values()):
        if cfg["path"]:
            raise ConfigError("set either data.path (one file) or data.train_path (one file per split), not both")
        if not cfg["train_path"]:
            raise ConfigError("data.validation_path / data.test_path need data.train_path as well")
        if cfg["format"] == "hf":
            raise ConfigError("data.train_path/validation_path/test_path are for csv, jsonl and parquet files; "
                              "with data.format=hf use data.path")
        return [(p, tag, read_table(resolve_path(p), cfg["format"])) for tag, p in per_split.items() if p], "files"
    if not cfg["path"]:
        raise ConfigError("data.path is not set: point it at a CSV, JSONL or Parquet file (or data.train_path "
                          "and friends for one file per split)")
    if cfg["format"] == "hf":
        parts = read_hf(cfg["path"], cfg["hf_subset"])
        if cfg["split_column"]:
            return [(f"{cfg['path']}[{name}]", "", part) for name, part in parts.items()], "split_column"
        known = {name: SPLIT_ALIASES[name.lower()] for name in parts if name.lower() in SPLIT_ALIASES}
        if "train" not in known.values():
            raise ConfigError(f"dataset {cfg['path']!r} has no train split; its splits are {sorted(parts)}")
        return [(f"{cfg['path']}[{name}]", tag, parts[name]) for name, tag in known.items()], "dataset_splits"
    return [(cfg["path"], "", read_table(resolve_path(cfg["path"]), cfg["format"]))], (
        "split_column" if cfg["split_column"] else "random")


def select_columns(raw: pd.DataFrame, cfg: dict, source: str, tag: str) -> pd.DataFrame:
    """The configured columns as text[, text_pair], label (strings) and split; labels checked."""
    wanted = [cfg["text_column"], cfg["label_column"], cfg["text_pair_column"], cfg["split_column"]]
    for column in filter(None, wanted):
        if column not in raw.columns:
            raise ConfigError(f"column {column!r} not found in {source}; columns are {list(raw.columns)}")
    for column in cfg.get("group_columns") or []:
        if column not in raw.columns:
            raise ConfigError(f"group column {column!r} (data.group_columns) not found in {source}; "
                              f"columns are {list(raw.columns)}")

    def as_text(column: str) -> pd.Series:
        # Missing values (JSON null, Parquet null) count as empty texts, not the string "None".
        return raw[column].where(raw[column].notna(), "").astype(str).str.strip()

    frame = pd.DataFrame({"text": as_text(cfg["text_column"]), "label": as_text(cfg["label_column"])})
    if cfg["text_pair_column"]:
        frame["text_pair"] = as_text(cfg["text_pair_column"])
    # A row with neither text nor label is a blank row (dropped and counted by cleaning), not a missing label.
    missing = ((frame["label"] == "") & (frame["text"] != "")).to_numpy().nonzero()[0]
    if len(missing):
        raise ConfigError(f"label column {cfg['label_column']!r} in {source} has {len(missing)} missing value(s) "
                          f"(first on data row {missing[0] + 1})")
    for column in cfg.get("group_columns") or []:
        frame[GROUP_PREFIX + column] = as_text(column).replace("", MISSING_GROUP)
    if cfg["split_column"]:
        frame["split"] = normalise_split_values(as_text(cfg["split_column"]), cfg["split_column"], source)
    else:
        frame["split"] = tag
    return frame


def normalise_split_values(values: pd.Series, column: str, source: str) -> pd.Series:
    normalised = values.str.lower().map(SPLIT_ALIASES)
    unknown = sorted(values[normalised.isna()].unique())
    if unknown:
        raise ConfigError(f"split column {column!r} in {source} has value(s) {unknown[:5]}; expected train, "
                          f"validation (or val, dev) and test")
    return normalised


def encode_labels(frame: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, list[str]]:
    values = sorted(frame["label"].unique(), key=_label_sort_key)
    names = read_label_names(cfg["label_names_path"]) if cfg["label_names_path"] else {}
    frame = frame.assign(label=frame["label"].map({v: i for i, v in enumerate(values)}).astype(int))
    return frame, [names.get(v, v) for v in values]


def _label_sort_key(value: str):
    # Numeric labels sort as numbers (2 before 10), then anything else alphabetically.
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


# --- cleaning and splitting ---------------------------------------------------------------------

def text_key(frame: pd.DataFrame) -> list[str]:
    """What makes two rows the same example: the text, and for pair tasks the pair too."""
    return ["text", "text_pair"] if "text_pair" in frame.columns else ["text"]


def clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop empty texts, texts that carry conflicting labels, and exact duplicates (within and across splits)."""
    key = text_key(frame)
    if "split" not in frame.columns:
        frame = frame.assign(split="")
    summary = {"rows_read": int(len(frame))}
    empty = (frame[key] == "").any(axis=1)
    frame = frame[~empty]
    summary["empty_texts_dropped"] = int(empty.sum())

    # A text labelled two ways cannot be learned or scored honestly: drop every copy of it.
    labels_per_text = frame.groupby(key)["label"].transform("nunique")
    conflicting = frame[labels_per_text > 1]
    summary["conflicting_texts_dropped"] = int(conflicting[key].drop_duplicates().shape[0])
    summary["conflicting_rows_dropped"] = int(len(conflicting))
    frame = frame[labels_per_text == 1]

    # Keep one copy per text, in its most held-out split; the stable sort keeps the first copy otherwise.
    ordered = frame.assign(_priority=frame["split"].map(SPLIT_PRIORITY)).sort_values("_priority", kind="stable")
    within_split = ordered.duplicated(subset=key + ["split"])
    ordered = ordered[~within_split]
    across_splits = ordered.duplicated(subset=key)
    frame = ordered[~across_splits].sort_index().drop(columns="_priority").reset_index(drop=True)
    summary["duplicates_removed"] = int(within_split.sum() + across_splits.sum())
    summary["cross_split_duplicates_removed"] = int(across_splits.sum())
    summary["rows_kept"] = int(len(frame))
    return frame, summary


def check_splittable(pool: pd.DataFrame, label_names: list[str], parts: int) -> None:
    """A stratified split into `parts` pieces needs every class at least `parts` times."""
    counts = pool["label"].value_counts()
    rarest = counts.idxmin()
    if counts[rarest] < parts:
        raise ConfigError(f"too few rows to split: class {label_names[rarest]!r} has {counts[rarest]} row(s), "
                          f"need at least {parts} per class")


def carve(pool: pd.DataFrame, fraction: float, seed: int, notes: list | None = None,
          what: str = "held-out") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): a stratified, seeded share of `pool`. A class with a single row in `pool`
    cannot be stratified: its row stays in `rest` (said in `notes`), so a rare class is never lost
    and never crashes the split."""
    counts = pool["label"].value_counts()
    single = pool["label"].isin(counts.index[counts < 2])
    kept, stratifiable = pool[single], pool[~single]
    if notes is not None and len(kept):
        notes.append(f"{len(kept)} class(es) with a single row here kept out of the {what} split")
    try:
        rest, held_out = train_test_split(stratifiable, test_size=fraction, stratify=stratifiable["label"],
                                          random_state=seed)
    except ValueError as exc:
        # Too few rows for one of each class on both sides: a plain seeded split, said out loud.
        if notes is not None:
            notes.append(f"the {what} split is not stratified ({str(exc).splitlines()[0]})")
        try:
            rest, held_out = train_test_split(stratifiable, test_size=fraction, random_state=seed)
        except ValueError as plain:
            raise ConfigError(f"could not split the data: {str(plain).splitlines()[0]}") from None
    return pd.concat([rest, kept]).reset_index(drop=True), held_out.reset_index(drop=True)


def split(frame: pd.DataFrame, cfg: dict, label_names: list[str],
          notes: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/validation/test: the splits given in the data, the missing ones drawn from the training rows."""
    if frame["label"].nunique() < 2:
        only = label_names[frame["label"].iloc[0]]
        raise ConfigError(f"the label column {cfg['label_column']!r} has only one class ({only!r}) after cleaning; "
                          f"a classifier needs at least two")
    given = {name: part.drop(columns="split").reset_index(drop=True) for name, part in frame.groupby("split")}
    val_share, test_share = cfg["val_fraction"], cfg["test_fraction"]
    if set(given) == {""}:  # nothing given: the classic stratified three-way split
        pool = given[""]
        check_splittable(pool, label_names, 3)
        train, rest = carve(pool, val_share + test_share, cfg["seed"], notes, "validation and test")
        validation, test = carve(rest, test_share / (val_share + test_share), cfg["seed"], notes, "test")
        return train, validation, test
    if "train" not in given:
        raise ConfigError(f"the data give no training rows: found only the split(s) {sorted(given)}")
    train = given["train"]
    missing = [name for name in ("validation", "test") if name not in given]
    check_splittable(train, label_names, len(missing) + 1)
    # With the test split given, val_fraction is the share of the training rows held out for validation.
    if missing == ["validation", "test"]:
        train, rest = carve(train, val_share + test_share, cfg["seed"], notes, "validation and test")
        given["validation"], given["test"] = carve(rest, test_share / (val_share + test_share), cfg["seed"], notes, "test")
    elif missing:
        train, given[missing[0]] = carve(train, val_share if missing[0] == "validation" else test_share, cfg["seed"],
                                         notes, missing[0])
    absent = sorted(set(range(len(label_names))) - set(train["label"]))
    if absent:
        raise ConfigError(f"class {label_names[absent[0]]!r} has no training rows (it occurs only in the given "
                          f"validation/test data)")
    return train, given["validation"], given["test"]


def subsample(frame: pd.DataFrame, limit: int | None, seed: int, notes: list | None = None,
              what: str = "data.max_train_samples", label_names: list[str] | None = None) -> pd.DataFrame:
    """A stratified subset of at most `limit` rows (debug and budget runs) that keeps every class:
    each class gets at least one row (a class of one row is kept whole), the rest of the budget is
    shared out in proportion to the class sizes (largest remainder). A limit below the number of
    classes cannot keep them all: one-line ConfigError naming a class that would be lost."""
    if limit is None or len(frame) <= limit:
        return frame
    counts = frame["label"].value_counts().sort_index()
    if limit < len(counts):
        rarest = counts.idxmin()
        name = label_names[rarest] if label_names else rarest
        raise ConfigError(f"{what}={limit} is below the number of classes here ({len(counts)}): class {name!r} "
                          f"({counts[rarest]} row(s)) and others would be left out; set it to at least {len(counts)}")
    if counts.min() >= 2:
        try:  # sklearn's stratified draw where it can make one (the rows every earlier run drew)
            kept, _ = train_test_split(frame, train_size=limit, stratify=frame["label"], random_state=seed)
            return kept.reset_index(drop=True)
        except ValueError:  # fewer rows left out than classes: shared out below instead
            pass
    extra = counts - 1
    share = extra / extra.sum() * (limit - len(counts)) if extra.sum() else extra * 0.0
    take = share.astype(int)
    # Largest remainder: the rows the rounding left over go to the classes it cut most.
    leftover = limit - len(counts) - int(take.sum())
    take[(share - take).sort_values(ascending=False, kind="stable").index[:leftover]] += 1
    take = (take + 1).clip(upper=counts)
    parts = [frame[frame["label"] == label].sample(n=int(n), random_state=seed) for label, n in take.items()]
    if notes is not None:
        notes.append(f"{what}={limit}: {len(frame)} rows subsampled to {int(take.sum())}, stratified, all "
                     f"{len(counts)} classes kept ({int((counts == 1).sum())} of one row)")
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def check_disjoint(parts: dict[str, pd.DataFrame]) -> None:
    """No example (text, or text + pair) in two splits. Cleaning guarantees it; this proves it."""
    keys = {name: set(map(tuple, part[text_key(part)].itertuples(index=False))) for name, part in parts.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if shared := keys[a] & keys[b]:
                raise RuntimeError(f"{len(shared)} example(s) occur in both the {a} and the {b} split")


def load_splits(cfg: dict) -> DataSplits:
    sources, split_source = read_sources(cfg)
    frame = pd.concat([select_columns(raw, cfg, name, tag) for name, tag, raw in sources], ignore_index=True)
    masked = None
    if cfg.get("deidentify"):
        # First thing after reading: every later step (cleaning, logging, training, writing) sees masked text.
        frame, masked = deidentify_frame(frame)
    frame, summary = clean(frame)
    if masked is not None:
        summary["deidentified"] = masked
    if frame.empty:
        if summary["empty_texts_dropped"] == summary["rows_read"]:
            raise ConfigError(f"all {summary['rows_read']} texts in column {cfg['text_column']!r} are empty")
        raise ConfigError("no usable rows after dropping empty texts and texts with conflicting labels")
    frame, label_names = encode_labels(frame, cfg)
    notes: list[str] = []  # what the splitting and subsampling did about rare classes, printed with the summary
    train, validation, test = split(frame, cfg, label_names, notes)
    calibration = None
    if cfg.get("calibration_fraction"):
        # Before the subsample, so neither a search nor a refit on all training rows ever trains on them.
        check_splittable(train, label_names, 2)
        train, calibration = carve(train, cfg["calibration_fraction"], cfg["seed"], notes, "calibration")
    unsampled_train = train
    train = subsample(train, cfg["max_train_samples"], cfg["seed"], notes, "data.max_train_samples", label_names)
    # Feedback rows never duplicate a held-out row: validation, test, and the calibration split if carved.
    held_out = [validation, test] + ([calibration] if calibration is not None else [])
    train, unsampled_train = add_feedback(cfg, label_names, train, unsampled_train, held_out, summary, notes)
    validation = subsample(validation, cfg["max_eval_samples"], cfg["seed"], notes, "data.max_eval_samples", label_names)
    parts = dict(zip(SPLITS, (train, validation, test)))
    if calibration is not None:
        parts["calibration"] = calibration
    check_disjoint(parts)
    summary["split_source"] = split_source
    summary["split_sizes"] = {name: len(part) for name, part in parts.items()}
    summary["class_counts"] = {
        name: {label_names[k]: int(v) for k, v in sorted(part["label"].value_counts().items())}
        for name, part in parts.items()
    }
    if notes:
        summary["notes"] = notes
    splits = DataSplits(train, validation, test, label_names, summary,
                        unsampled_train if len(unsampled_train) != len(train) else None, calibration)
    summary["fingerprints"] = splits.fingerprints
    if calibration is not None:
        summary["fingerprints"]["calibration"] = fingerprint(calibration)
    return splits


def describe(summary: dict) -> str:
    """The cleaning summary as the few lines printed before a sweep (counts and hashes, never text)."""
    sizes = summary["split_sizes"]
    duplicates = f"{summary['duplicates_removed']} duplicates"
    if summary["split_source"] != "random":
        duplicates += f" ({summary['cross_split_duplicates_removed']} across the given splits)"
    lines = [
        f"data: {summary['rows_read']} rows read; dropped {summary['empty_texts_dropped']} empty, "
        f"{summary['conflicting_texts_dropped']} texts with conflicting labels ({summary['conflicting_rows_dropped']} rows), "
        f"{duplicates}; train/val/test = {sizes['train']}/{sizes['validation']}/{sizes['test']} "
        + (f"+ {sizes['calibration']} calibration " if "calibration" in sizes else "")
        + f"(split: {summary['split_source']})",
    ]
    for name in [*SPLITS, *(["calibration"] if "calibration" in sizes else [])]:
        counts = ", ".join(f"{label} {n}" for label, n in summary["class_counts"][name].items())
        lines.append(f"  {name:<10} {counts}   fingerprint {summary['fingerprints'][name]}")
    lines += [f"  note: {note}" for note in summary.get("notes", [])]
    if "deidentified" in summary:
        masked = summary["deidentified"]
        lines.append(f"  de-identified: {masked['rows_changed']} rows changed; masked "
                     + ", ".join(f"{kind} {n}" for kind, n in masked["masked"].items()))
    return "\n".join(lines)


def fingerprint(frame: pd.DataFrame) -> str:
    """Order-independent hash of a split's rows, recorded with every trial and promoted model."""
    columns = [c for c in ("text", "text_pair", "label") if c in frame.columns]
    rows = sorted("\x1f".join(str(v) for v in row) for row in frame[columns].itertuples(index=False))
    return hashlib.sha256("\x1e".join(rows).encode()).hexdigest()[:16]
