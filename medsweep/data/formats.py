"""Read a data file (CSV, JSON Lines, Parquet) or a Hugging Face dataset into a pandas DataFrame.

Every way a file can be unreadable becomes a one-line ConfigError naming the file and, where there
is one, the line: the researcher fixes the file, not the code. Values come back as written (CSV
cells as strings, empty cells as ""), so that cleaning can count what it drops. The training data
(medsweep.data.splits) and the inputs of predict and explain are read by the same functions;
`role` names the file in messages ("data file", "input file").
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import pandas as pd

from medsweep.config import ConfigError
from medsweep.hf import builtin_name, hub_offline_reason
# Data sets shipped inside the package, named there (medsweep.builtin_models reads them too).
from medsweep.resources import BUILTIN_FILES, builtin_file

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def resolve_path(path: str, role: str = "data file") -> Path:
    """A file path, or `builtin:NAME` for a data file shipped with medsweep."""
    name = builtin_name(path)
    if name is not None:
        if name not in BUILTIN_FILES:
            raise ConfigError(f"unknown built-in data file {path!r}; known: {sorted(BUILTIN_FILES)}")
        return builtin_file(name)
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(f"{role} not found: {path}")
    if resolved.is_dir():
        raise ConfigError(f"{role.split()[0]} path is a directory, expected a file: {path}")
    return resolved


def read_table(path: Path, fmt: str, role: str = "data file", keep_blank_lines: bool = False) -> pd.DataFrame:
    """One file as a DataFrame with at least one row. `fmt` is csv, jsonl or parquet.
    `keep_blank_lines`: a blank CSV line is a row (of empty values) rather than skipped, for inputs
    whose output must have one row per input line."""
    if fmt == "parquet":
        frame = read_parquet(path, role)
    elif fmt in ("csv", "jsonl"):
        text = read_text(path, role)
        frame = parse_csv(text, path, keep_blank_lines) if fmt == "csv" else parse_jsonl(text, path)
    else:
        raise ConfigError(f"data.format must be csv, jsonl or parquet for a file, got {fmt!r}")
    if frame.empty:
        raise ConfigError(f"{role} {path} has a header but no data rows")
    return frame


def read_text(path: Path, role: str = "data file") -> str:
    """The file's text: gunzipped if compressed, checked to be UTF-8 text and not empty."""
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{path} is a damaged gzip file: {exc}") from None
    if not raw.strip():
        raise ConfigError(f"{role} {path} is empty")
    if raw[:4] == PARQUET_MAGIC:
        raise ConfigError(f"{path} is a Parquet file, not text: use data=parquet")
    if raw[:2] in UTF16_BOMS:
        raise ConfigError(f"{path} is UTF-16 encoded: re-save it as UTF-8")
    if b"\x00" in raw[:65536]:
        raise ConfigError(f"{path} is a binary file, not CSV or JSON Lines text")
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is not part of the header
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not valid UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): re-save it as UTF-8"
        ) from None


def parse_csv(text: str, path: Path, keep_blank_lines: bool = False) -> pd.DataFrame:
    if text.lstrip()[:1] in ("{", "["):
        raise ConfigError(f"{path} looks like JSON, not CSV: use data=jsonl")
    try:
        # dtype=str keeps labels such as "01" or "yes" exactly as written; keep_default_na=False
        # keeps an empty cell as "" (an empty text is dropped by cleaning and counted) rather than NaN.
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=not keep_blank_lines)
    except pd.errors.ParserError as exc:
        if "Calling read(nbytes) on source failed" in str(exc):
            # The source is an in-memory string: reading it fails only when a signal (Ctrl-C, SIGTERM)
            # interrupts the C parser, which reports it as a parse error. An interrupted read is an
            # interruption, never a damaged file.
            raise KeyboardInterrupt from None
        raise ConfigError(f"malformed CSV in {path}: {_csv_problem(str(exc))}") from None


def _csv_problem(message: str) -> str:
    """pandas' tokenizer message, said in terms of the file's lines."""
    import re

    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message):
        expected, line, saw = m.groups()
        return f"line {line} has {saw} fields but the header has {expected} (an unquoted comma?)"
    if m := re.search(r"EOF inside string starting at row (\d+)", message):
        return f"the quoted field that starts on line {int(m.group(1)) + 1} is never closed"
    return message.strip().splitlines()[-1]


def parse_jsonl(text: str, path: Path) -> pd.DataFrame:
    """JSON Lines (one object per line); a JSON array of objects is accepted too."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} on line {exc.lineno}") from None
        numbered = list(enumerate(records, 1))
        unit = "item"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                hint = " (is this a CSV file? use data=csv)" if number == 1 and not line.lstrip().startswith("{") else ""
                raise ConfigError(f"{path} line {number} is not valid JSON: {exc.msg} at column {exc.colno}{hint}") from None
        unit = "line"
    for number, record in numbered:
        if not isinstance(record, dict):
            raise ConfigError(f"{path} {unit} {number} is a JSON {type(record).__name__}, expected an object")
        if key := next((k for k, v in record.items() if not _encodable(k) or isinstance(v, str) and not _encodable(v)), None):
            # JSON's \ud800 escapes decode to lone UTF-16 surrogates, which no UTF-8 text can hold: every
            # later step (pyarrow, the tokenizer, a CSV writer) would fail on them with a traceback.
            name = key if _encodable(key) else "?"
            raise ConfigError(f"{path} {unit} {number}: field {name!r} holds a lone UTF-16 surrogate (an escape "
                              f"such as \\ud800 with no pair), which is not text")
    return pd.DataFrame([record for _, record in numbered])


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_parquet(path: Path, role: str = "data file") -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise ConfigError(f"{role} {path} is empty")
    with open(path, "rb") as f:
        if f.read(4) != PARQUET_MAGIC:
            raise ConfigError(f"{path} is not a Parquet file (use data=csv or data=jsonl for text files)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise ConfigError(f"could not read {path} as Parquet: {str(exc).splitlines()[0]}") from None


# --- Hugging Face datasets ----------------------------------------------------------------------

def read_hf(path: str, subset: str | None) -> dict[str, pd.DataFrame]:
    """A Hub dataset id or a local dataset folder, as {split name: DataFrame}.

    ClassLabel columns come back as their label names, so a model's labels read as the data set's.
    """
    import datasets

    local = Path(path).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            loaded = datasets.load_from_disk(str(local))  # written by save_to_disk: keeps its features
        elif local.is_dir():
            loaded = datasets.load_dataset(str(local), subset)
        else:
            loaded = _load_from_hub(path, subset)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, DatasetNotFoundError)
        raise ConfigError(f"could not load the dataset {path!r}: {str(exc).strip().splitlines()[0]}") from None
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    frames = {}
    for name, part in parts.items():
        frame = part.to_pandas()
        for column, feature in part.features.items():
            if isinstance(feature, datasets.ClassLabel):
                frame[column] = [feature.int2str(int(v)) if v is not None and v >= 0 else None for v in frame[column]]
        frames[name] = frame
    return frames


def _load_from_hub(dataset_id: str, subset: str | None):
    """load_dataset, but fail in seconds with one sentence when the Hub cannot be reached.

    Offline, datasets retries the network for half a minute before it looks in its own cache;
    here an unreachable Hub switches straight to the cache.
    """
    import datasets
    import huggingface_hub.constants

    reason = "HF_HUB_OFFLINE is set" if datasets.config.HF_HUB_OFFLINE else hub_offline_reason()
    if reason is None:
        return datasets.load_dataset(dataset_id, subset)
    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(dataset_id, subset)
    except Exception:
        raise ConfigError(
            f"dataset {dataset_id!r} is not a local folder nor in the Hugging Face cache, and {reason}; "
            f"download it on a connected machine (save_to_disk) and pass its folder as data.path"
        ) from None
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
