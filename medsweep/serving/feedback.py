"""Feedback on served predictions: what the service remembers of its recent answers, and the SQLite
database where a clinician's "the right label was X" is kept (POST /feedback writes it; the
`python -m medsweep.feedback` tool exports and summarises it). This module owns the schema.

Safety: the texts kept here never reach a log. Recent predictions live in memory only, bounded
(the last `capacity`, 10,000 by default, and no more than 100 million characters of text); a feedback row stores the text (and pair) masked with
medsweep.data.deid when the model was trained with data.deidentify=true (its medsweep_config.yaml
says so), as the training data was.

The database is in WAL mode (readers, e.g. an export, do not block the service's writes) with a
busy timeout; every write opens its own connection, under a lock, so concurrent requests (the
threadpool) never share one. Needs only the standard library (and numpy for the summary's CI).
"""

from __future__ import annotations

import csv
import math
import sqlite3
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from medsweep.rundir import FEEDBACK_DB, PROMOTED, RunDir

RECENT_PREDICTIONS = 10_000
RECENT_CHARS = 100_000_000  # and at most this many characters of text (about 100-400 MB)
BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 1
COLUMNS = ("id", "created_at", "prediction_id", "model_version", "predicted_label", "right_label", "agrees",
           "comment", "text", "text_pair", "predicted_at", "deidentified")
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,          -- when the feedback arrived (UTC, ISO 8601)
    prediction_id TEXT NOT NULL,       -- the prediction_id /predict answered with
    model_version TEXT,                -- the version that answered (null: an unversioned folder)
    predicted_label TEXT NOT NULL,     -- what the model said (argmax, or "refer")
    right_label TEXT NOT NULL,         -- what the clinician says it is
    agrees INTEGER NOT NULL,           -- 1 where they are the same
    comment TEXT,
    text TEXT NOT NULL,                -- masked with medsweep.data.deid where the model was trained so
    text_pair TEXT,
    predicted_at TEXT NOT NULL,        -- when the prediction was made (UTC, ISO 8601)
    deidentified INTEGER NOT NULL      -- 1 where text and text_pair were masked
);
CREATE INDEX IF NOT EXISTS feedback_version ON feedback (model_version);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Remembered:
    """One served prediction, as feedback on it needs it."""

    text: str
    text_pair: Optional[str]
    label: str
    probabilities: dict
    version: Optional[str]
    labels: tuple
    deidentify: bool
    at: str


class RecentPredictions:
    """prediction_id -> Remembered for the last `capacity` predictions holding at most `max_chars`
    characters of text (oldest forgotten first), thread-safe. Memory only: never written anywhere, never logged."""

    def __init__(self, capacity: int = RECENT_PREDICTIONS, max_chars: int = RECENT_CHARS):
        self.capacity, self.max_chars = capacity, max_chars
        self._items: OrderedDict[str, Remembered] = OrderedDict()
        self._chars = 0  # characters of text held: long notes are forgotten sooner than 10,000
        self._lock = threading.Lock()

    @staticmethod
    def _size(item: Remembered) -> int:
        return len(item.text) + len(item.text_pair or "")

    def remember(self, item: Remembered) -> str:
        key = str(uuid.uuid4())
        with self._lock:
            self._items[key] = item
            self._chars += self._size(item)
            while len(self._items) > self.capacity or (self._chars > self.max_chars and len(self._items) > 1):
                _, old = self._items.popitem(last=False)
                self._chars -= self._size(old)
        return key

    def get(self, key: str) -> Optional[Remembered]:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def trained_deidentified(folder) -> bool:
    """Whether the model in `folder` was trained on de-identified text (data.deidentify in its
    medsweep_config.yaml); False where the folder has no such file."""
    import yaml

    from medsweep.release.layout import SETTINGS_FILE

    if folder is None or not (Path(folder) / SETTINGS_FILE).exists():
        return False
    try:
        config = yaml.safe_load((Path(folder) / SETTINGS_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return False
    data = config.get("data") if isinstance(config, dict) else None
    return isinstance(data, dict) and data.get("deidentify") is True


def default_db(source) -> Path:
    """Where feedback goes unless feedback_db= says: the run dir's feedback.sqlite when the service
    was started on a run's `promoted` link (or on the run dir), else beside the model folder."""
    source = Path(source)
    if source.name == PROMOTED and source.is_symlink():
        return RunDir(source.parent).feedback_db
    if RunDir(source).promoted.exists():
        return RunDir(source).feedback_db
    return source.resolve().parent / FEEDBACK_DB


def connect(path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


class FeedbackStore:
    """The feedback database at `path`, created (schema, WAL mode) on the first write."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ready = False

    def _open(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = connect(self.path)
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._ready = True
        return connection

    def add(self, prediction_id: str, item: Remembered, right_label: str, comment: Optional[str] = None) -> int:
        """Append one feedback row; its id."""
        text, pair = item.text, item.text_pair
        if item.deidentify:
            from medsweep.data.deid import deidentify_text

            text = deidentify_text(text)
            pair = deidentify_text(pair) if pair is not None else None
            comment = deidentify_text(comment) if comment is not None else None
        values = (now_iso(), prediction_id, item.version, item.label, right_label, int(item.label == right_label),
                  comment, text, pair, item.at, int(item.deidentify))
        with self._lock:
            connection = self._open()
            try:
                cursor = connection.execute(
                    f"INSERT INTO feedback ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})",
                    values)
                return int(cursor.lastrowid)
            finally:
                connection.close()


    def accuracy(self, version: Optional[str], refer_label: str = "refer") -> tuple[int, int]:
        """(labelled, right) of one model version's feedback rows, answers `refer_label` left out
        (they claimed no label); (0, 0) before the first feedback."""
        if not self.path.is_file():
            return 0, 0
        connection = connect(self.path)
        try:
            labelled, right = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(agrees), 0) FROM feedback WHERE model_version IS ? AND predicted_label != ?",
                (version, refer_label)).fetchone()
        finally:
            connection.close()
        return int(labelled), int(right)


# --- reading (the medsweep.feedback tool) ---------------------------------------------------------

def read_rows(path) -> list[dict]:
    from medsweep.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"feedback database not found: {path}")
    connection = connect(path)
    try:
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(f"SELECT {', '.join(COLUMNS)} FROM feedback ORDER BY id")]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not a medsweep feedback database: {exc}") from None
    finally:
        connection.close()


def _inert(value):
    """A cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) written as text."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def export_csv(path, output) -> int:
    """Every feedback row to a CSV file; how many."""
    rows = read_rows(path)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _inert(v) for k, v in row.items()})
    return len(rows)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (nan, nan) for n=0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(path) -> dict:
    """Per model version: rows, agreement (share marked right) with its Wilson 95% CI, and the
    confusion of predicted vs right label ({predicted: {right: count}})."""
    versions: dict = {}
    for row in read_rows(path):
        version = row["model_version"] or "unversioned"
        entry = versions.setdefault(version, {"n": 0, "agree": 0, "confusion": {}})
        entry["n"] += 1
        entry["agree"] += int(row["agrees"])
        cell = entry["confusion"].setdefault(row["predicted_label"], {})
        cell[row["right_label"]] = cell.get(row["right_label"], 0) + 1
    out = {}
    for version, entry in sorted(versions.items()):
        low, high = wilson(entry["agree"], entry["n"])
        out[version] = {"n": entry["n"], "agreement": entry["agree"] / entry["n"], "agreement_ci95": [low, high],
                        "confusion": entry["confusion"]}
    return out


def format_summary(summary: dict) -> str:
    if not summary:
        return "no feedback yet"
    lines = []
    for version, entry in summary.items():
        low, high = entry["agreement_ci95"]
        lines.append(f"{version}: {entry['n']} feedback, agreement {entry['agreement']:.3f} "
                     f"(95% Wilson CI {low:.3f}-{high:.3f})")
        rights = sorted({r for cells in entry["confusion"].values() for r in cells})
        width = max([len("predicted \\ right")] + [len(p) for p in entry["confusion"]])
        lines.append("  " + "predicted \\ right".ljust(width) + "".join(f"  {r:>10}" for r in rights))
        for predicted, cells in sorted(entry["confusion"].items()):
            lines.append("  " + predicted.ljust(width) + "".join(f"  {cells.get(r, 0):>10}" for r in rights))
    return "\n".join(lines)

