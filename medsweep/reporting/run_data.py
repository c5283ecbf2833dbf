"""What the report reads from a run dir, read once into a SweepData.

Only what a sweep leaves on disk: the config Hydra saved, Ray's per-trial result.json files of every
search experiment (`sweep`, and `sweep_extended` when sweep.extend_edges ran a follow-up round),
the leaderboard, and the promoted model's metrics.json and test_predictions.npz (labels and
probabilities, no text). Every path comes from medsweep.rundir; the objective from medsweep.plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from medsweep import plan
from medsweep.release import layout
from medsweep.rundir import RunDir
from medsweep.search.space import flatten, flatten_values


@dataclass
class TrialRecord:
    trial_id: str
    params: dict  # "trainer.learning_rate" -> value
    history: pd.DataFrame  # one row per evaluation, Ray's result.json
    started: float
    status: str = ""

    def best_value(self, objective: plan.Objective) -> float | None:
        """The trial's best evaluation of the objective's metric, by the one "best" rule (plan.Objective)."""
        column = self.history.get(objective.metric, pd.Series(dtype=float))
        best = objective.best_value(pd.to_numeric(column, errors="coerce").dropna().tolist())
        return None if best is None else float(best)


@dataclass
class SweepData:
    run_dir: Path
    config: dict
    objective: plan.Objective  # the primary objective: what the sweep plots and the leaderboard rank by
    trials: list[TrialRecord]
    param_specs: dict  # "trainer.learning_rate" -> search space leaf, spanning every trial's value
    leaderboard: pd.DataFrame | None
    promoted: dict | None  # promoted/metrics.json
    predictions: dict | None  # labels, probs, label_names
    skipped: dict = field(default_factory=dict)  # plot name -> why it was not drawn

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return self.objective.mode


def short_names(names) -> dict[str, str]:
    """"trainer.learning_rate" -> "learning_rate", "model.lora.r" -> "lora.r" (as in the console table)."""
    short = {name: name.split(".", 1)[-1] for name in names}
    return short if len(set(short.values())) == len(short) else {name: name for name in names}


def load_config(run_dir: Path) -> dict:
    paths = RunDir(Path(run_dir))
    for path in (paths.hydra_config, paths.promoted / layout.SETTINGS_FILE):
        if path.exists():
            return yaml.safe_load(path.read_text())
    raise FileNotFoundError(f"{run_dir} has neither .hydra/config.yaml nor promoted/medsweep_config.yaml: not a medsweep run dir")


def load_trials(*experiments: Path) -> list[TrialRecord]:
    """Every trial of these Ray experiment folders, in the order they started."""
    trials = []
    for result_file in sorted(f for experiment in experiments for f in Path(experiment).glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        params_file = result_file.with_name("params.json")
        params = flatten_values(json.loads(params_file.read_text()) if params_file.exists() else rows[0].get("config", {}))
        started = rows[0].get("timestamp", 0) - rows[0].get("time_total_s", 0)
        trials.append(TrialRecord(rows[0]["trial_id"], params, pd.DataFrame(rows), started))
    return sorted(trials, key=lambda t: (t.started, t.trial_id))


def spanning(specs: dict, trials: list[TrialRecord]) -> dict:
    """The search space's numeric ranges widened to every trial's value. A follow-up round
    (sweep.extend_edges) searched moved ranges, and the saved config holds one round's ranges only:
    an axis must hold both rounds' trials (Optuna refuses a value outside its distribution)."""
    widened = {}
    for path, spec in specs.items():
        widened[path] = spec
        number = int if spec["type"] == "int" else float
        values = [number(t.params[path]) for t in trials
                  if isinstance(t.params.get(path), (int, float)) and not isinstance(t.params[path], bool)]
        if spec["type"] == "choice" or not values:
            continue
        # Bounds as YAML gave them unless a trial lies outside: "1e-3" is a string to YAML 1.1.
        lower, upper = number(spec["lower"]), number(spec["upper"])
        if min(values) < lower or max(values) > upper:
            widened[path] = {**spec, "lower": min(lower, min(values)), "upper": max(upper, max(values))}
    return widened


def load(run_dir: str | Path, config: dict | None = None) -> SweepData:
    run_dir = Path(run_dir)
    config = config or load_config(run_dir)
    paths = RunDir.of(config, root=run_dir)  # the run dir as it is now: a copy reads its own files
    data = SweepData(run_dir=run_dir, config=config, objective=plan.primary(config), trials=[], param_specs={},
                     leaderboard=None, promoted=None, predictions=None)
    if paths.remote_storage:
        data.skipped["sweep plots"] = f"trial results are in remote storage ({paths.storage}); copy them to read them"
    else:
        data.trials = load_trials(*paths.search_experiments())
    data.param_specs = spanning(flatten(config["sweep"].get("search_space") or {}), data.trials)
    if paths.leaderboard_csv.exists():
        data.leaderboard = pd.read_csv(paths.leaderboard_csv, dtype={"trial_id": str})
        status = dict(zip(data.leaderboard["trial_id"], data.leaderboard["status"]))
        for trial in data.trials:
            trial.status = status.get(trial.trial_id, "")
    if (paths.promoted / layout.METRICS_FILE).exists():
        folder = layout.resolve_folder(paths.promoted)  # once: metrics and predictions of one version
        data.promoted = layout.read_metrics(folder)
        data.predictions = layout.read_test_predictions(folder)
    return data
