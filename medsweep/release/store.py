"""The promoted store of a run dir: versioned folders, the atomic `promoted` link, the history.

    promoted -> promoted-versions/vNNN      the link readers follow (swapped in one rename)
    promoted-versions/vNNN/                 one complete promoted folder each (release/layout.py)
    promoted-versions/history.jsonl         one line per promotion, append-only

A version is written in full under `vNNN.partial`, renamed to `vNNN`, then the link is swapped,
then the promotion is appended to the history. A crash at any point leaves the previous promoted
model in place and loadable; no version folder is ever overwritten or deleted, and version numbers
are never reused once a version was completed. This module is the only writer of the store; what
goes inside a version folder is layout.py's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from medsweep.release import layout
from medsweep.rundir import RunDir


def read_history(run_dir: Path) -> list[dict]:
    path = RunDir(Path(run_dir)).history
    if not path.exists():
        return []
    # A line cut short by a crash mid-append is skipped, not fatal.
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def next_version_dir(run_dir: Path) -> Path:
    """vNNN after every completed version folder and every version the history names, so a number
    is never reused (a crashed attempt's `.partial` folder does not count and is cleared)."""
    versions = RunDir(run_dir).versions
    versions.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in versions.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name))]
    numbers += [int(m.group(1)) for e in read_history(run_dir) if (m := re.fullmatch(r"v(\d+)", str(e.get("version"))))]
    return versions / f"v{max(numbers, default=0) + 1:03d}"


def current_version(run_dir: Path) -> str | None:
    link = RunDir(run_dir).promoted
    return Path(os.readlink(link)).name if link.is_symlink() else None


def swap_link(run_dir: Path, target: Path) -> Path:
    link = RunDir(run_dir).promoted
    tmp_link = link.with_name(f".{link.name}.tmp")
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(target.relative_to(run_dir))
    os.replace(tmp_link, link)  # atomic on POSIX: readers see the old or the new model, never neither
    return link


def record_history(run_dir: Path, entry: dict) -> None:
    """Append-only: one JSON line per promotion, flushed to disk before promotion returns."""
    with open(RunDir(run_dir).history, "a") as history:
        history.write(json.dumps(entry, default=str) + "\n")
        history.flush()
        os.fsync(history.fileno())


def reconcile_history(run_dir: Path, history_entry: Callable[[dict], dict]) -> None:
    """If a crash came between the link swap and the history append, the promoted version has no
    history line: add it (from its own metrics.json) before anything else is recorded."""
    current = current_version(run_dir)
    if current is None or any(e.get("version") == current for e in read_history(run_dir)):
        return
    version_dir = RunDir(run_dir).versions / current
    if (version_dir / layout.METRICS_FILE).exists():
        record_history(run_dir, {**history_entry(layout.read_metrics(version_dir)), "recovered": True})


class Version:
    """A version being written: `folder` (the staging folder) is filled by the caller, then
    `publish` renames it into place, swaps the link and records the history line."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.target = next_version_dir(run_dir)
        self.name = self.target.name
        self.folder = self.target.with_name(self.target.name + ".partial")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.previous = current_version(run_dir)

    def discard(self) -> None:
        """Drop the staged folder unpublished (promote.gate refused it): the link and history stay as they were."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def publish(self, entry: dict) -> Path:
        os.replace(self.folder, self.target)
        link = swap_link(self.run_dir, self.target)
        record_history(self.run_dir, entry)
        return link


@contextmanager
def new_version(run_dir: str | Path, history_entry: Callable[[dict], dict]) -> Iterator[Version]:
    """Hold the store's lock and stage the next version (two promotions into one run dir at once
    would race for the same version number). A history line a crash left out is recovered first."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir / f".{RunDir(run_dir).promoted.name}.lock")):
        reconcile_history(run_dir, history_entry)
        yield Version(run_dir)
