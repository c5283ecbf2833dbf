"""Recorded medsweep learning curves (experiments/record_curves.py) as a replay source.

The table holds real trials over a grid (fine-tune mode, learning rate, warm-up, LoRA rank and targets,
epochs, two seeds): one row per evaluation with its validation metrics and the seconds since the trial
started. A configuration off the grid replays its nearest recorded neighbours, as tabular HPO
benchmarks do, but interpolated rather than snapped to one grid point:

- the fine-tune mode must match (a full fine-tune is never replayed from LoRA curves), and so must the
  LoRA target modules when the table has that adapter;
- the trial's seed picks one recorded seed (seed modulo the number recorded), so two seeds of one
  configuration replay two different real runs, with the seed noise the search has to live with;
- among those recordings, the K nearest in (log learning rate, warm-up, log2 rank, epochs), each axis
  scaled to the recorded range, are averaged evaluation by evaluation with weights 1/distance (an exact
  grid point replays its own curve). Values outside the recorded ranges take the nearest edge's curves.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from medsweep.config import ConfigError
from medsweep.search.space import get_path

# The table's parameters and the config keys that set them (the table is medsweep's own: fixed mapping).
KEYS = {"finetune": "model.finetune", "learning_rate": "trainer.learning_rate", "warmup_ratio": "trainer.warmup_ratio",
        "r": "model.lora.r", "target_modules": "model.lora.target_modules", "epochs": "trainer.epochs",
        "seed": "trainer.seed"}
METRICS = ("val_f1_macro", "val_accuracy", "val_recall_macro", "val_loss")
REQUIRED = (*KEYS, "evaluation", *METRICS, "seconds")
# The trial's clock: its CPU seconds where recorded (one torch thread per trial: its time alone on a
# core, not inflated by other load on the recording machine), else its wall seconds.
CLOCKS = ("cpu_seconds", "seconds")
# (axis, transform) for the distance; each axis is then divided by its recorded span.
AXES = (("learning_rate", math.log), ("warmup_ratio", float), ("r", lambda r: math.log2(max(float(r), 1.0))),
        ("epochs", float))
NEIGHBOURS = 3
EMBEDDED = "minilm_medical_abstracts.csv"


def embedded_table() -> Path:
    """The table shipped in the package (recorded on 2 CPU cores; its .json beside it says how)."""
    return Path(str(resources.files("medsweep.resources").joinpath("curves", EMBEDDED)))


def table_path(replay: dict) -> Path:
    return Path(replay["table"]).expanduser() if replay.get("table") else embedded_table()


class CurveTable:
    """`curve(params, evaluations)` -> one dict per evaluation (medsweep's metric names, cumulative seconds)."""

    def __init__(self, path: str | Path):
        import pandas as pd

        path = Path(path)
        try:
            frame = pd.read_csv(path, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as error:
            raise ConfigError(f"replay.table {str(path)!r} cannot be read as a curve table: {error}") from None
        missing = [column for column in REQUIRED if column not in frame.columns]
        if missing:
            raise ConfigError(f"replay.table {str(path)!r} lacks the column(s) {missing} (experiments/record_curves.py writes them)")
        if frame.empty:
            raise ConfigError(f"replay.table {str(path)!r} has no rows")
        self.path = path
        self.clock = next(c for c in CLOCKS if c in frame.columns and (frame[c].astype(float) > 0).all())
        self.trials: list[dict] = []
        for trial_key, rows in frame.groupby(list(KEYS), sort=True):
            rows = rows.sort_values("evaluation")
            params = dict(zip(KEYS, trial_key))
            self.trials.append({"params": params, "curve": [
                {**{name: float(row[name]) for name in METRICS}, "epoch": float(row.get("epoch", row["evaluation"])),
                 "seconds": float(row[self.clock])} for _, row in rows.iterrows()]})
        lengths = {len(trial["curve"]) for trial in self.trials}
        if len(lengths) != 1:
            raise ConfigError(f"replay.table {str(path)!r} mixes trials of {sorted(lengths)} evaluations: record them alike")
        self.evaluations = lengths.pop()
        self.seeds = sorted({int(trial["params"]["seed"]) for trial in self.trials})
        self.spans = {}
        for axis, transform in AXES:
            values = [transform(trial["params"][axis]) for trial in self.trials]
            self.spans[axis] = (min(values), max(values))

    def _position(self, params: dict, axis: str, transform) -> float:
        low, high = self.spans[axis]
        value = min(max(transform(params[axis]), low), high)  # off the recorded range: the nearest edge
        return 0.0 if high == low else (value - low) / (high - low)

    def candidates(self, params: dict) -> list[dict]:
        """The recordings a configuration may be replayed from: same fine-tune mode (and adapter targets
        where recorded), the seed it maps to."""
        finetune = params["finetune"]
        pool = [t for t in self.trials if t["params"]["finetune"] == finetune]
        if not pool:
            recorded = sorted({t["params"]["finetune"] for t in self.trials})
            raise ValueError(f"the curve table has no {finetune!r} trials (it has {recorded})")
        if finetune != "full":
            same_targets = [t for t in pool if t["params"]["target_modules"] == params["target_modules"]]
            pool = same_targets or pool
        seed = self.seeds[int(params["seed"]) % len(self.seeds)]
        return [t for t in pool if int(t["params"]["seed"]) == seed] or pool

    def neighbours(self, params: dict) -> list[tuple[float, dict]]:
        """(weight, recording) of the K nearest recordings; weights sum to 1."""
        params = dict(params)
        if params["finetune"] == "full":
            params["r"] = 0  # full fine-tunes are recorded with r=0: rank is no distance for them
        where = {axis: self._position(params, axis, transform) for axis, transform in AXES}
        scored = []
        for trial in self.candidates(params):
            distance = math.sqrt(sum((where[axis] - self._position(trial["params"], axis, transform)) ** 2
                                     for axis, transform in AXES))
            scored.append((distance, trial))
        scored.sort(key=lambda item: item[0])
        nearest = scored[:NEIGHBOURS]
        if nearest[0][0] < 1e-9:
            return [(1.0, nearest[0][1])]
        weights = [1.0 / distance for distance, _ in nearest]
        total = sum(weights)
        return [(weight / total, trial) for weight, (_, trial) in zip(weights, nearest)]

    def curve(self, params: dict, evaluations: int) -> list[dict]:
        if evaluations != self.evaluations:
            raise ValueError(f"the curve table records {self.evaluations} evaluations per trial, not {evaluations}")
        mixed = self.neighbours(params)
        points = []
        for index in range(self.evaluations):
            point = {name: sum(w * t["curve"][index][name] for w, t in mixed) for name in (*METRICS, "seconds", "epoch")}
            points.append(point)
        return points

    def values(self, name: str) -> list:
        """The recorded values of one parameter (for search spaces over the grid)."""
        return sorted({trial["params"][name] for trial in self.trials})


def table_params(config: dict) -> dict:
    """The table's parameters as this trial's config sets them."""
    return {name: get_path(config, key) for name, key in KEYS.items()}


def check_table(config: dict) -> CurveTable:
    """The table, read and checked against the sweep before Ray starts (one line on a problem)."""
    table = CurveTable(table_path(config["replay"]))
    evaluations = config["trainer"]["evaluations"]
    if evaluations != table.evaluations:
        raise ConfigError(f"replay.source=table: the table records {table.evaluations} evaluations per trial; "
                          f"set trainer.evaluations={table.evaluations} (got {evaluations})")
    return table
