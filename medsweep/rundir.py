"""The run dir: every file and folder a run writes, named once.

A run dir (Hydra's output dir, or `run_dir` in a composed config) holds everything one sweep leaves:

    .hydra/                 the composed config (written once the checks pass)
    .medsweep-driver.lock   one driver per run dir (search/driver.py)
    data_summary.json       the splits' sizes, classes and fingerprints
    leaderboard.csv/.md     one row per finished trial (search/leaderboard.py)
    study.json              where the Optuna study is (search/study.py); optuna.journal by default
    budget.json             the time budget's count (search/budget.py)
    seed_runs.csv           the top configurations after seed re-runs (promotion/)
    pareto.csv/.json        the Pareto front of a multi-objective sweep (promotion/)
    ray/<experiment>/       Ray Tune's experiments: sweep, sweep_extended, seeds
    cache/tokens/           tokenized splits shared by the trials (data/cache.py)
    report/                 the report (reporting/)
    promoted                the atomic link to the promoted version (release/store.py)
    promoted-versions/      every promoted version, vNNN, and history.jsonl
    feedback.sqlite         feedback on the served model's predictions (serving/feedback.py)
    wandb/, mlflow/         the trackers' local stores, unless tracker.dir puts them elsewhere (reporting/)

Writers and readers (the report, compare, the trackers, warm start, serve's reload) ask this
module for a path instead of joining strings: a file moves in one place. It imports nothing but
the standard library, so every package may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
LOCK_FILE = ".medsweep-driver.lock"
DATA_SUMMARY = "data_summary.json"
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
STUDY_FILE = "study.json"
JOURNAL_FILE = "optuna.journal"
BUDGET_FILE = "budget.json"
SEED_RUNS = "seed_runs.csv"
PARETO_CSV = "pareto.csv"
PARETO_JSON = "pareto.json"
RAY_DIR = "ray"
REPORT_DIR = "report"
PROMOTED = "promoted"
VERSIONS = "promoted-versions"
HISTORY = "history.jsonl"
TOKEN_CACHE = Path("cache") / "tokens"
FEEDBACK_DB = "feedback.sqlite"  # what clinicians said of served predictions (medsweep/feedback.py)
GATE_FILE = "gate.json"  # promote.gate's verdict on this run's candidate (promotion/gate.py)

# Ray Tune experiments of a run, in the order they run.
SWEEP_EXPERIMENT = "sweep"
EXTENDED_EXPERIMENT = "sweep_extended"  # the follow-up round of sweep.extend_edges (search/edges.py)
SEEDS_EXPERIMENT = "seeds"  # seed re-runs and refits (promotion/)
SEARCH_EXPERIMENTS = (SWEEP_EXPERIMENT, EXTENDED_EXPERIMENT)

# The sweep's tables, in the order trackers upload them.
TABLES = (LEADERBOARD_CSV, LEADERBOARD_MD, SEED_RUNS, PARETO_CSV)


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file so that readers (a dashboard, `watch cat`) never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run dir. `storage` is cluster.storage_path (None: `<run dir>/ray`)."""

    root: Path
    storage: str | None = None

    @classmethod
    def of(cls, config: dict, root: str | Path | None = None) -> "RunDir":
        """The run dir of `config`; `root` where it is now when that differs from the `run_dir` the
        config saved (a copied or moved run dir, e.g. `python -m medsweep.report COPY`)."""
        return cls(Path(root if root is not None else config["run_dir"]), (config.get("cluster") or {}).get("storage_path"))

    def resolved(self) -> "RunDir":
        """Absolute paths: Ray runs trials in their own working directories."""
        return RunDir(self.root.resolve(), self.storage)

    # --- the driver's files ----------------------------------------------------------------------
    @property
    def hydra_config(self) -> Path:
        return self.root / HYDRA_CONFIG

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def data_summary(self) -> Path:
        return self.root / DATA_SUMMARY

    @property
    def leaderboard_csv(self) -> Path:
        return self.root / LEADERBOARD_CSV

    @property
    def leaderboard_md(self) -> Path:
        return self.root / LEADERBOARD_MD

    @property
    def study_file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def journal(self) -> Path:
        return self.root.resolve() / JOURNAL_FILE

    @property
    def budget(self) -> Path:
        return self.root / BUDGET_FILE

    @property
    def seed_runs(self) -> Path:
        return self.root / SEED_RUNS

    @property
    def pareto_csv(self) -> Path:
        return self.root / PARETO_CSV

    @property
    def pareto_json(self) -> Path:
        return self.root / PARETO_JSON

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def token_cache(self) -> Path:
        return self.root / TOKEN_CACHE

    def tables(self) -> list[Path]:
        """The sweep's tables that exist (what trackers upload)."""
        return [self.root / name for name in TABLES if (self.root / name).exists()]

    # --- Ray's experiments -----------------------------------------------------------------------
    @property
    def ray_storage(self) -> str:
        """Where Ray keeps trial results and checkpoints: cluster.storage_path, or <run dir>/ray."""
        return self.storage or str(self.root.resolve() / RAY_DIR)

    @property
    def remote_storage(self) -> bool:
        return bool(self.storage) and "://" in self.storage

    def experiment(self, name: str = SWEEP_EXPERIMENT) -> str:
        """Ray's experiment folder `name` (what Tuner.restore resumes)."""
        return f"{self.ray_storage.rstrip('/')}/{name}"

    def search_experiments(self) -> list[Path]:
        """The search's experiment folders that exist on local disk (sweep, then sweep_extended):
        every trial the report and the trackers read."""
        if self.remote_storage:
            return []
        return [Path(self.experiment(name)) for name in SEARCH_EXPERIMENTS if Path(self.experiment(name)).is_dir()]

    # --- the promoted store (written by release/store.py only) -----------------------------------
    @property
    def promoted(self) -> Path:
        return self.root / PROMOTED

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS

    @property
    def history(self) -> Path:
        return self.root / VERSIONS / HISTORY

    @property
    def gate(self) -> Path:
        return self.root / GATE_FILE

    # --- what the service writes (serving/feedback.py) -------------------------------------------
    @property
    def feedback_db(self) -> Path:
        return self.root / FEEDBACK_DB


def promoted_folder(path: str | Path) -> Path:
    """What a user passed: a run dir (its `promoted` link) or a promoted folder itself."""
    path = Path(path)
    link = RunDir(path).promoted
    return link if link.exists() else path
