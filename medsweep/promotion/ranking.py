"""Ranking a sweep's trials: what represents a trial, single- and multi-objective ranking, the Pareto front.

Rules 1 and 2 of the promotion (README "Evaluation and promotion" repeats them for users):

1. A trial of the sweep is represented by the checkpoint Ray kept for it: its best evaluation step
   by the primary objective (sweep.metric, or sweep.metrics[0]). Its objective values are those of
   that step, so every number below belongs to a model that could actually be promoted.
2. Ranking. One objective: by its value. Several objectives: non-dominated sorting (the Pareto front
   first, then the front of what remains, ...); within a front, by the distance to the ideal point
   after min-max scaling each objective over the candidates (best = 1), closest first; ties by the
   primary objective. A trial with an undefined (NaN) objective ranks after all others.

Rules 3 and 4 (seed re-runs, which run is promoted) are promotion/selection.py's.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsweep.plan import objectives, primary
from medsweep.rundir import RunDir, atomic_write
from medsweep.search.space import apply_overrides, flatten_values


RANKING_RULE = {
    "single": "highest (mode max) or lowest (mode min) value of the primary objective",
    "multi": ("non-dominated sorting: Pareto front first; within a front, the smallest Euclidean distance to the "
              "ideal point after min-max scaling each objective over the candidates (best = 1); ties by the primary objective"),
}
PROMOTED_RUN_RULE = ("the best evaluation step of the winning configuration's run (sweep run or seed re-run) "
                     "with the best primary objective")


@dataclass
class Run:
    """One training run of a configuration, represented by its kept (best-step) checkpoint."""

    seed: int
    scores: dict  # every metric of the kept evaluation
    checkpoint: object  # ray.tune.Checkpoint
    path: str  # the Ray trial folder
    origin: str  # "sweep", "seed" (a seed re-run) or "refit" (a re-run on all training rows)


@dataclass
class Candidate:
    """A configuration of the sweep (a trial's sampled hyperparameters) and its runs."""

    trial_id: str
    params: dict
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [float(run.scores.get(metric, math.nan)) for run in self.runs]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return float(np.mean(values)) if values else math.nan

    def std(self, metric: str) -> float:
        # Sample standard deviation (ddof=1): the spread of a re-run; 0 with a single run.
        values = self.values(metric)
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# --- ranking ---------------------------------------------------------------------------------------

def _oriented(points: np.ndarray, modes: list[str]) -> np.ndarray:
    """Objective values flipped so that larger is better in every column."""
    return points * np.array([1.0 if mode == "max" else -1.0 for mode in modes])


def pareto_mask(points: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows are Pareto-optimal: no other row is at least as good in every objective and
    strictly better in one. Rows with a NaN are never optimal (and dominate nothing)."""
    points = np.asarray(points, dtype=np.float64).reshape(len(points), len(modes))
    finite = np.isfinite(points).all(axis=1)
    better = _oriented(points, modes)
    optimal = finite.copy()
    for i in np.flatnonzero(finite):
        others = better[finite]
        dominated = np.any(np.all(others >= better[i], axis=1) & np.any(others > better[i], axis=1))
        optimal[i] = not dominated
    return optimal


def rank_order(points: np.ndarray, modes: list[str]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Row indices best first (rule 2), each row's front number (1 = Pareto front, 0 = NaN) and
    its scaled distance to the ideal point."""
    points = np.asarray(points, dtype=np.float64).reshape(len(points), len(modes))
    n = len(points)
    finite = np.isfinite(points).all(axis=1)
    better = _oriented(points, modes)
    distance = np.full(n, np.inf)
    if finite.any():
        low, high = better[finite].min(axis=0), better[finite].max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        scaled = (better - low) / span  # best candidate of each objective -> 1
        distance[finite] = np.sqrt(((1.0 - scaled[finite]) ** 2).sum(axis=1))

    front = np.zeros(n, dtype=int)
    remaining = finite.copy()
    level = 0
    while remaining.any():
        level += 1
        optimal = np.zeros(n, dtype=bool)
        optimal[remaining] = pareto_mask(points[remaining], modes)
        front[optimal] = level
        remaining &= ~optimal

    primary = better[:, 0]
    # Python's sort is stable: equal keys keep the sweep's order.
    order = sorted(range(n), key=lambda i: (not finite[i], front[i], distance[i], -primary[i] if finite[i] else 0.0))
    return order, front, distance


def rank(candidates: list[Candidate], targets: list[tuple[str, str]], use_mean: bool) -> list[Candidate]:
    value = Candidate.mean if use_mean else (lambda c, m: c.values(m)[0])
    points = np.array([[value(c, metric) for metric, _ in targets] for c in candidates], dtype=np.float64)
    order, _, _ = rank_order(points, [mode for _, mode in targets])
    return [candidates[i] for i in order]


# --- from Ray results ------------------------------------------------------------------------------

def kept_run(result, config: dict, origin: str) -> Run | None:
    """The run's best evaluation by the primary objective and its checkpoint (None if it kept none)."""
    objective = primary(config)
    best = objective.best(result.best_checkpoints or [], lambda kept: kept[1].get(objective.metric))
    if best is None:
        return None
    trial_config = result.config or {}
    # A seed re-run's Tune config is {candidate, seed}; a sweep trial's is its sampled hyperparameters.
    seed = trial_config["seed"] if origin != "sweep" else apply_overrides(config, trial_config)["trainer"]["seed"]
    return Run(seed=int(seed), scores=dict(best[1]), checkpoint=best[0], path=str(result.path), origin=origin)


class NoUsableTrial(RuntimeError):
    """Every trial failed or none reported the sweep's metric with a checkpoint: nothing to promote."""


def sweep_candidates(results, config: dict) -> list[Candidate]:
    candidates = []
    for result in results:
        run = kept_run(result, config, origin="sweep")
        if run is None:
            continue
        trial_id = run.scores.get("trial_id") or Path(run.path).name
        candidates.append(Candidate(trial_id=str(trial_id), params=copy.deepcopy(result.config or {}), runs=[run]))
    if not candidates:
        errors = [str(r.error).splitlines()[0] for r in results if r.error]
        raise NoUsableTrial(f"no trial kept a checkpoint with {primary(config).metric}: {errors[:3]}")
    return candidates


def rank_sweep(results, config: dict) -> list[Candidate]:
    """The sweep's trials best first (rule 2); with several objectives, also writes the Pareto front."""
    targets = objectives(config)
    candidates = sweep_candidates(results, config)
    if len(targets) > 1:
        write_pareto(RunDir.of(config), candidates, targets)
    return rank(candidates, targets, use_mean=False)


def best_candidate(results, config: dict) -> Candidate | None:
    """The sweep's best trial by rule 2 (no files written), or None when no trial kept a checkpoint."""
    try:
        return rank(sweep_candidates(list(results), config), objectives(config), use_mean=False)[0]
    except NoUsableTrial:
        return None


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_pareto(run_dir: RunDir, candidates: list[Candidate], targets: list[tuple[str, str]]) -> list[dict]:
    """pareto.csv / pareto.json: every trial's objective values (at its kept step), whether it is on
    the Pareto front, and its rank by rule 2."""
    points = np.array([[c.values(m)[0] for m, _ in targets] for c in candidates], dtype=np.float64)
    order, front, distance = rank_order(points, [mode for _, mode in targets])
    rows = []
    for position, i in enumerate(order, 1):
        c = candidates[i]
        rows.append({"rank": position, "trial_id": c.trial_id, "pareto_optimal": bool(front[i] == 1), "front": int(front[i]),
                     "ideal_distance": float(distance[i]), **{m: float(points[i, j]) for j, (m, _) in enumerate(targets)},
                     "step": c.runs[0].scores.get("step"), **flatten_values(c.params)})
    atomic_write(run_dir.pareto_csv, csv_text(rows))
    payload = {"objectives": [{"metric": m, "mode": mode} for m, mode in targets], "rule": RANKING_RULE["multi"],
               "front": [r for r in rows if r["pareto_optimal"]], "trials": rows}
    atomic_write(run_dir.pareto_json, json.dumps(payload, indent=2, default=str))
    print(f"[medsweep] Pareto front ({', '.join(f'{m} {mode}' for m, mode in targets)}): "
          + "; ".join(f"{r['trial_id']} " + " ".join(f"{m}={r[m]:.4f}" for m, _ in targets) for r in payload["front"]), flush=True)
    return rows


