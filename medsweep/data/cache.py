"""Tokenized splits on disk, shared by every trial and seed re-run of a sweep.

Each trial used to tokenize the same rows again. Here a split is tokenized once per key and saved as
Arrow under `<run dir>/cache/tokens/<key>/`; later trials (in any worker process) memory-map it.

The key is a hash of everything the token ids depend on: the tokenizer (its name, revision and, for
fast tokenizers, its whole serialized vocabulary and rules), max_length, which columns are present,
and the rows themselves in order (text, text pair, label). Because the rows are part of the key, a
changed data file (or another subsample, oversampling, augmentation seed) gives another key: a stale
entry is never read, it is simply not found. Entries are written to a temporary folder and renamed
into place in one step, so a crashed or concurrent writer never leaves a half-written entry under a
key; when two trials race, the first rename wins and the other's copy is dropped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import datasets
import pandas as pd

# Bump when what is stored changes (columns, their meaning), so old entries stop matching.
FORMAT_VERSION = "1"
ROW_COLUMNS = ("text", "text_pair", "label")


def rows_digest(frame: pd.DataFrame) -> str:
    """Order-sensitive hash of the rows a tokenized split is made from (the row order is the order
    the Trainer's seeded sampler draws from, so it matters, unlike splits.fingerprint)."""
    digest = hashlib.sha256()
    for column in ROW_COLUMNS:
        if column in frame.columns:
            digest.update(column.encode() + b"\x1d")
            digest.update("\x1f".join(map(str, frame[column].tolist())).encode() + b"\x1e")
    return digest.hexdigest()


def tokenizer_digest(tokenizer, model_cfg: dict) -> str:
    """What identifies a tokenizer's output: its source, and its full definition where it has one."""
    digest = hashlib.sha256(f"{model_cfg['name_or_path']}\x1f{model_cfg.get('revision')}\x1f"
                            f"{type(tokenizer).__name__}\x1f{len(tokenizer)}\x1f{tokenizer.pad_token_id}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    return digest.hexdigest()


def cache_key(frame: pd.DataFrame, tokenizer_id: str, max_length: int) -> str:
    columns = ",".join(c for c in ROW_COLUMNS if c in frame.columns)
    parts = [FORMAT_VERSION, datasets.__version__, tokenizer_id, str(max_length), columns, rows_digest(frame)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def cached(directory: Path | None, key: str, build: Callable[[], datasets.Dataset]) -> tuple[datasets.Dataset, bool]:
    """(the dataset stored under `key`, True) if there is one, else (build(), False) after storing it.
    `directory` None: no cache, always build."""
    if directory is None:
        return build(), False
    entry = Path(directory) / key
    if entry.is_dir():
        return datasets.Dataset.load_from_disk(str(entry)), True
    dataset = build()
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=entry.parent))
    try:
        dataset.save_to_disk(str(staging))
        os.rename(staging, entry)  # atomic on one file system; fails if another trial got there first
    except OSError:
        if not entry.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Read back what is stored, so the first trial trains on exactly what later ones will.
    return datasets.Dataset.load_from_disk(str(entry)), False
