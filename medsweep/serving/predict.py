"""`python -m medsweep.predict model=<promoted dir> input=<file.csv|file.jsonl> output=<file.csv> [...]`

Writes one row per input row, in input order: the id column (if asked for), `predicted_label` (the
label name) and one `prob_<label name>` column per label; for a model folder with a conformal
threshold (decision.json), `prediction_set` too: the labels of the row's split-conformal set, joined
by "|". `refer_when=set_size>1` writes `refer` as the predicted label of the rows it matches. The text columns default to the ones the
model was trained on (its medsweep_config.yaml). A user mistake is one line on stderr and exit 2.
Arguments are plain key=value pairs (no Hydra here: this is a tool to run next to a model, not a run).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medsweep.config import ConfigError
from medsweep.release import layout
from medsweep.serving.args import arg, tool_main
from medsweep.serving.inference import REFER_LABEL, check_refer_rule, load_promoted, refer_rule

PROB_PREFIX = "prob_"
SET_COLUMN, SET_SEPARATOR = "prediction_set", "|"
# A cell starting with one of these is run as a formula by a spreadsheet that opens the CSV (OWASP "CSV
# injection"): such a text cell is written with a leading apostrophe, which spreadsheets show as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
INPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class ModelInputArgs:
    """The arguments of the tools that run a promoted model over a file of texts (predict, explain)."""

    model: str = arg("the promoted model folder (runs/<run>/promoted)", metavar="<promoted dir>")
    input: str = arg("the texts: a .csv (header row) or .jsonl file, optionally .gz", metavar="<file.csv|file.jsonl>")
    output: str = arg("where the predictions go (CSV)", metavar="<file.csv>")
    text_column: Optional[str] = arg("the column holding the texts (default: the one the model was trained on)",
                                     None, "NAME")
    text_pair_column: Optional[str] = arg("the second text of pair models; empty turns pairs off "
                                          "(default: the model's)", None, "NAME")
    id_column: Optional[str] = arg("a column copied to the output to identify rows", None, "NAME")
    max_length: Optional[int] = arg("tokens kept per text (default: the model's)", None, "N")


@dataclass
class PredictArgs(ModelInputArgs):
    batch_size: Optional[int] = arg("texts per forward pass (default: the model's eval batch size)", None, "N")
    refer_when: Optional[str] = arg("write `refer` as the label of rows whose prediction set matches, e.g. "
                                    "set_size>1 (needs a model with decision.json)", None, "RULE")


def input_format(path: Path) -> str:
    suffixes = path.suffixes[-2:] if path.suffix.lower() == ".gz" else path.suffixes[-1:]
    fmt = INPUT_FORMATS.get(suffixes[0].lower()) if suffixes else None
    if fmt is None:
        raise ConfigError(f"input must be a .csv or .jsonl file, got {path.name!r}")
    return fmt


def read_inputs(path: str, text_column: str, text_pair_column: Optional[str], id_column: Optional[str]):
    """(texts, pairs or None, ids or None) from a CSV or JSONL file; every text must be non-empty.
    The file is read by the same careful readers as training data (medsweep.data.formats)."""
    from medsweep.data.formats import read_table, resolve_path

    file = resolve_path(path, role="input file")
    # A blank CSV line is a row too (an empty text, refused below): no input row is dropped silently.
    frame = read_table(file, input_format(file), role="input file", keep_blank_lines=True)
    for column in [text_column] + [c for c in (text_pair_column, id_column) if c]:
        if column not in frame.columns:
            raise ConfigError(f"column {column!r} not found in {path}; columns are {list(frame.columns)} "
                              f"(set text_column=/text_pair_column= to choose)")
    texts_by_column = {}
    for column in [text_column] + ([text_pair_column] if text_pair_column else []):
        values = frame[column]
        blank = values.isna() | (values.astype(str).str.strip() == "")
        if blank.any():
            first = int(np.flatnonzero(blank.to_numpy())[0])
            raise ConfigError(f"{int(blank.sum())} empty value(s) in column {column!r} of {path} (first at data row {first + 1})")
        texts_by_column[column] = values.astype(str).tolist()
    pairs = texts_by_column[text_pair_column] if text_pair_column else None
    ids = frame[id_column].tolist() if id_column else None
    return texts_by_column[text_column], pairs, ids


def input_columns(args, settings: layout.Settings) -> tuple[str, Optional[str]]:
    """The text and pair columns: given on the command line, else the trained-with ones;
    text_pair_column= (empty) switches a trained-with pair column off."""
    text_column = args.text_column or settings.text_column
    pair_column = settings.text_pair_column if args.text_pair_column is None else (args.text_pair_column or None)
    return text_column, pair_column


def checked_output(output: str, source: str) -> Path:
    path = Path(output).expanduser()
    if path.is_dir():
        raise ConfigError(f"output is a folder, not a file: {output} (name the CSV file to write)")
    if not path.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {path.parent}")
    if path.exists() and path.resolve() == Path(source).expanduser().resolve():
        raise ConfigError("output would overwrite the input file")
    return path


def prediction_table(probs: np.ndarray, label_names: list[str], ids=None, id_column: Optional[str] = None,
                     sets: Optional[np.ndarray] = None, referred: Optional[np.ndarray] = None,
                     decided: Optional[np.ndarray] = None):
    """The output rows; `sets` (booleans per label) adds the prediction_set column, `referred` (a
    boolean per row) writes `refer` as those rows' label; `decided`: each row's label index by the
    model's decision rule (default: the argmax)."""
    import pandas as pd

    decided = probs.argmax(axis=1) if decided is None else decided
    predicted = [label_names[i] for i in decided]
    if referred is not None:
        predicted = [REFER_LABEL if refer else label for label, refer in zip(predicted, referred)]
    table = pd.DataFrame({"predicted_label": [spreadsheet_safe(label) for label in predicted]})
    for k, name in enumerate(label_names):
        table[f"{PROB_PREFIX}{name}"] = probs[:, k]
    if sets is not None:
        table[SET_COLUMN] = [spreadsheet_safe(SET_SEPARATOR.join(n for n, inside in zip(label_names, row) if inside))
                             for row in sets]
    if ids is not None:
        table.insert(0, id_column, [spreadsheet_safe(value) for value in ids])
    return table


def spreadsheet_safe(value):
    """A text cell a spreadsheet would run as a formula, made inert; anything else as it is."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def run(args: PredictArgs) -> Path:
    rule = refer_rule(args.refer_when)
    settings = layout.read_settings(args.model)
    text_column, pair_column = input_columns(args, settings)
    output = checked_output(args.output, args.input)
    texts, pairs, ids = read_inputs(args.input, text_column, pair_column, args.id_column)

    # The version folder read above, not the link: a promotion meanwhile cannot mix two versions.
    promoted = load_promoted(settings.folder, max_length=args.max_length, batch_size=args.batch_size)
    check_refer_rule(rule, promoted)
    probs = promoted.predict(texts, pairs)
    sets = promoted.sets(probs)
    referred = rule(sets.sum(axis=1)) if rule is not None else None
    table = prediction_table(probs, promoted.label_names, ids, args.id_column, sets, referred, promoted.decide(probs))
    # Written whole, then renamed: an interrupted run never leaves a half-written predictions file.
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, output)
    except OSError as exc:  # the output became a folder meanwhile, the disk is full, no permission...
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"could not write {output}: {exc.strerror or type(exc).__name__}") from None
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("medsweep.predict", PredictArgs, argv, lambda args: f"wrote {run(args)}")


if __name__ == "__main__":
    sys.exit(main())
