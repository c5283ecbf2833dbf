"""Batched inference with a promoted model, and its command line:

    python -m medsweep.predict model=<promoted dir> input=<file.csv|file.jsonl> output=<file.csv>
        [text_column=NAME] [text_pair_column=NAME] [id_column=NAME] [batch_size=N] [max_length=N]

Writes one row per input row, in input order: the id column (if asked for), `predicted_label` (the
label name) and one `prob_<label name>` column per label. The text columns default to the ones the
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
from medsweep.tool_args import parse_key_values, tool_main

CONFIG_FILE = "medsweep_config.yaml"
PROB_PREFIX = "prob_"
USAGE = ("usage: python -m medsweep.predict model=<promoted dir> input=<file.csv|file.jsonl> output=<file.csv> "
         "[text_column=NAME] [text_pair_column=NAME] [id_column=NAME] [batch_size=N] [max_length=N]")
ARGUMENTS = ("model", "input", "output", "text_column", "text_pair_column", "id_column", "batch_size", "max_length")

from medsweep.model import load_promoted_model


def predict_proba(model, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                  max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """(len(texts), num_labels) softmax probabilities, in input order."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    # Sorting by length makes each padded batch tight; the result is put back in input order.
    order = np.argsort([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)])
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs is not None else None,
                              truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
            logits = model(**batch).logits.float()
            probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs


@dataclass
class PromotedModel:
    """A promoted folder loaded for inference, with the settings it was trained with."""

    model: object
    tokenizer: object
    label_names: list[str]
    text_column: str
    text_pair_column: Optional[str]
    max_length: int
    batch_size: int
    version: Optional[str] = None

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        return predict_proba(self.model, self.tokenizer, list(texts), list(pairs) if pairs is not None else None,
                             max_length=self.max_length, batch_size=self.batch_size)


def read_model_settings(model_dir: str | Path) -> dict:
    """Text columns, max length and version of a promoted folder, without loading the weights."""
    import json

    import yaml

    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model folder not found: {model_dir}")
    if not (folder / "config.json").exists():
        raise ConfigError(f"{model_dir} is not a model folder (no config.json); pass the promoted/ folder of a run")
    settings = {"text_column": "text", "text_pair_column": None, "max_length": 512, "batch_size": 64, "version": None}
    if (folder / CONFIG_FILE).exists():
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
        settings.update(text_column=config["data"]["text_column"], text_pair_column=config["data"]["text_pair_column"],
                        max_length=config["trainer"]["max_length"], batch_size=config["trainer"]["eval_batch_size"])
    if (folder / "metrics.json").exists():
        settings["version"] = json.loads((folder / "metrics.json").read_text()).get("version")
    return settings


def load_promoted(model_dir: str | Path, **overrides) -> PromotedModel:
    """Load a promoted folder (safetensors weights only, no remote code). `overrides` replace the
    trained-with settings (text_column, text_pair_column, max_length, batch_size)."""
    from medsweep.trial import quiet_libraries

    settings = read_model_settings(model_dir)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    quiet_libraries()
    try:
        # Merged weights, or adapter/ + base_model.json for a 4-bit base: model.py knows both.
        model, tokenizer = load_promoted_model(model_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the model in {model_dir}: {str(exc).splitlines()[0]}") from None
    import torch

    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:  # 4-bit bases are placed already
        model.to("cuda")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return PromotedModel(model, tokenizer, labels, **settings)


# --- command line ----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> dict:
    return parse_key_values(argv, ARGUMENTS, required=("model", "input", "output"), positive_ints=("batch_size", "max_length"))


def read_inputs(path: str, text_column: str, text_pair_column: Optional[str], id_column: Optional[str]):
    """(texts, pairs or None, ids or None) from a CSV or JSONL file; every text must be non-empty."""
    import pandas as pd

    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError(f"input file not found: {path}")
    if file.is_dir():
        raise ConfigError(f"input is a directory, expected a .csv or .jsonl file: {path}")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ConfigError(f"input must be a .csv or .jsonl file, got {file.name!r}")
    try:
        if suffix == ".csv":
            # Texts stay exactly as written; an empty cell is "" (and rejected below), not NaN; a blank
            # line is a row too, so that no input row is dropped silently.
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, skip_blank_lines=False)
        else:
            frame = pd.read_json(file, lines=True, dtype=False)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"input file is empty: {path}") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"could not read {path}: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise ConfigError(f"input file has no rows: {path}")
    columns = [text_column] + [c for c in (text_pair_column, id_column) if c]
    for column in columns:
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


def prediction_table(probs: np.ndarray, label_names: list[str], ids=None, id_column: Optional[str] = None):
    import pandas as pd

    table = pd.DataFrame({"predicted_label": [label_names[i] for i in probs.argmax(axis=1)]})
    for k, name in enumerate(label_names):
        table[f"{PROB_PREFIX}{name}"] = probs[:, k]
    if ids is not None:
        table.insert(0, id_column, ids)
    return table


def run(args: dict) -> Path:
    settings = read_model_settings(args["model"])
    text_column = args.get("text_column") or settings["text_column"]
    # text_pair_column= (empty) on the command line turns a trained-with pair column off.
    pair_column = (args["text_pair_column"] or None) if "text_pair_column" in args else settings["text_pair_column"]
    output = Path(args["output"]).expanduser()
    if not output.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {output.parent}")
    if output.exists() and output.resolve() == Path(args["input"]).expanduser().resolve():
        raise ConfigError("output would overwrite the input file")
    texts, pairs, ids = read_inputs(args["input"], text_column, pair_column, args.get("id_column"))

    promoted = load_promoted(args["model"], max_length=args.get("max_length"), batch_size=args.get("batch_size"))
    probs = promoted.predict(texts, pairs)
    table = prediction_table(probs, promoted.label_names, ids, args.get("id_column"))
    # Written whole, then renamed: an interrupted run never leaves a half-written predictions file.
    tmp = output.with_name(f".{output.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, output)
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body(argv: list[str]) -> int:
        output = run(parse_args(argv))
        print(f"[medsweep] wrote {output}", file=sys.stderr)
        return 0

    return tool_main("medsweep.predict", USAGE, argv, body)


if __name__ == "__main__":
    sys.exit(main())
