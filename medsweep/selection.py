"""Which model gets promoted: ranking, the Pareto front, seed re-runs of the top configurations.

The rules, in order (README "Evaluation and promotion" repeats them for users):

1. A trial of the sweep is represented by the checkpoint Ray kept for it: its best evaluation step
   by the primary objective (sweep.metric, or sweep.metrics[0]). Its objective values are those of
   that step, so every number below belongs to a model that could actually be promoted.
2. Ranking. One objective: by its value. Several objectives: non-dominated sorting (the Pareto front
   first, then the front of what remains, ...); within a front, by the distance to the ideal point
   after min-max scaling each objective over the candidates (best = 1), closest first; ties by the
   primary objective. A trial with an undefined (NaN) objective ranks after all others.
3. Seed robustness. The top `promote.top_k` configurations are re-trained once per seed in
   `promote.seeds` (same hyperparameters, only trainer.seed changes) as trials of a second Ray Tune
   Tuner, without early stopping. Each run scores its best evaluation, as in 1. The configuration
   whose mean over its runs (the sweep's own run included) ranks best by rule 2 wins.
4. The promoted checkpoint is the best step (rule 1) of the winning configuration's best run by
   the primary objective: the run itself may have been lucky, but the configuration was chosen on its
   mean, and the recorded mean ± std says how much a re-run can be expected to vary.
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

from medsweep.metrics import is_better
from medsweep.search_space import apply_overrides, flatten_values
from medsweep.sweep import objectives, tune_trial

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
    origin: str  # "sweep" or "seed"


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


@dataclass
class Selection:
    winner: Candidate
    run: Run  # the run whose checkpoint is promoted
    ranked: list[Candidate]  # the sweep's candidates, best first (rule 2 on single runs)
    reranked: list[Candidate]  # the top-k after seed re-runs, best first (rule 2 on means)
    num_trials: int

    def provenance(self, config: dict) -> dict:
        """What metrics.json records about how this model was chosen."""
        targets = objectives(config["sweep"])
        promote = config["promote"]
        return {
            "trial_id": self.winner.trial_id,
            "trial_path": self.run.path,
            "checkpoint": self.run.checkpoint.path,
            "num_trials": self.num_trials,
            "sweep": config["sweep"]["name"],
            "objectives": [{"metric": m, "mode": mode} for m, mode in targets],
            "selection": {
                "ranking_rule": RANKING_RULE["multi" if len(targets) > 1 else "single"],
                "promoted_run_rule": PROMOTED_RUN_RULE,
                "top_k": promote["top_k"],
                "extra_seeds": list(promote["seeds"]),
                "promoted_seed": self.run.seed,
                "promoted_run_origin": self.run.origin,
            },
            "seed_robustness": seed_summary(self.winner, targets),
            "candidates": [candidate_summary(c, targets) for c in self.reranked],
        }


def seed_summary(candidate: Candidate, targets: list[tuple[str, str]]) -> dict:
    primary = targets[0][0]
    return {
        "seeds": [run.seed for run in candidate.runs],
        "metric": primary,
        "values": candidate.values(primary),
        "mean": candidate.mean(primary),
        "std": candidate.std(primary),
        "n": len(candidate.runs),
        "per_objective": {m: {"mean": candidate.mean(m), "std": candidate.std(m)} for m, _ in targets},
    }


def candidate_summary(candidate: Candidate, targets: list[tuple[str, str]]) -> dict:
    return {"trial_id": candidate.trial_id, "params": flatten_values(candidate.params), **seed_summary(candidate, targets)}


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
    metric, mode = config["sweep"]["metric"], config["sweep"]["mode"]
    best = None
    for checkpoint, scores in result.best_checkpoints or []:
        if best is None or is_better(scores.get(metric), best[1].get(metric), mode):
            best = (checkpoint, scores)
    if best is None:
        return None
    trial_config = result.config or {}
    # A seed re-run's Tune config is {candidate, seed}; a sweep trial's is its sampled hyperparameters.
    seed = trial_config["seed"] if origin == "seed" else apply_overrides(config, trial_config)["trainer"]["seed"]
    return Run(seed=int(seed), scores=dict(best[1]), checkpoint=best[0], path=str(result.path), origin=origin)


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
        raise RuntimeError(f"no trial kept a checkpoint with {config['sweep']['metric']}: {errors[:3]}")
    return candidates


def seed_trial(params: dict, base_config: dict, sampled_by_candidate: dict, trainable_fn=tune_trial) -> None:
    """Ray Tune trainable of a seed re-run: a sweep configuration with another trainer.seed."""
    sampled = copy.deepcopy(sampled_by_candidate[params["candidate"]])
    sampled.setdefault("trainer", {})["seed"] = params["seed"]
    trainable_fn(sampled, base_config)


def rerun_with_seeds(config: dict, candidates: list[Candidate], seeds: list[int], trainable_fn=tune_trial):
    """Re-train each candidate once per seed as trials of a second Tuner; returns its ResultGrid.

    A Tuner rather than bare Ray tasks: the runs get the same trainable, resources, checkpoint
    keeping (best step by the primary metric), result files and progress table as the sweep.
    No scheduler: a re-run must train as long as any run of its configuration may have.
    """
    from ray import tune

    from medsweep.progress import CompactReporter
    from medsweep.sweep import init_ray

    sweep, cluster = config["sweep"], config["cluster"]
    run_dir = Path(config["run_dir"]).resolve()
    init_ray(cluster)
    by_id = {c.trial_id: c.params for c in candidates}
    trainable = tune.with_resources(
        tune.with_parameters(seed_trial, base_config=config, sampled_by_candidate=by_id, trainable_fn=trainable_fn),
        {"cpu": cluster["cpus_per_trial"], "gpu": cluster["gpus_per_trial"]},
    )
    # One grid point per (candidate trial id, seed); seed_runs.csv lists each candidate's hyperparameters.
    param_space = {"candidate": tune.grid_search(list(by_id)), "seed": tune.grid_search(list(seeds))}
    reporter = CompactReporter(parameter_columns={"candidate": "candidate", "seed": "seed"},
                               metric_columns={sweep["metric"]: sweep["metric"], "evaluation": "evals"},
                               max_report_frequency=30, max_progress_rows=20, max_error_rows=5)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=sweep["metric"], mode=sweep["mode"], num_samples=1,
                                    max_concurrent_trials=sweep["max_concurrent"],
                                    reuse_actors=cluster["reuse_actors"]),
        run_config=tune.RunConfig(
            name="seeds",
            storage_path=cluster["storage_path"] or str(run_dir / "ray"),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=sweep["metric"],
                                                    checkpoint_score_order=sweep["mode"]),
            progress_reporter=reporter,
            verbose=1,
        ),
    )
    return tuner.fit()


def rank_sweep(results, config: dict) -> list[Candidate]:
    """The sweep's trials best first (rule 2); with several objectives, also writes the Pareto front."""
    targets = objectives(config["sweep"])
    candidates = sweep_candidates(results, config)
    if len(targets) > 1:
        write_pareto(Path(config["run_dir"]), candidates, targets)
    return rank(candidates, targets, use_mean=False)


def choose(results, config: dict, trainable_fn=tune_trial) -> Selection:
    """Rank the sweep, write the Pareto front (several objectives), re-run the top-k with the extra
    seeds, and pick the configuration and run to promote."""
    targets = objectives(config["sweep"])
    promote = config["promote"]
    run_dir = Path(config["run_dir"])
    ranked = rank_sweep(results, config)
    top = ranked[:promote["top_k"]]
    # Re-running seeds picks between configurations; a single run (no sweep) has nothing to pick
    # between, so it is promoted as it is rather than trained three times.
    if promote["seeds"] and len(ranked) > 1:
        reruns = rerun_with_seeds(config, top, promote["seeds"], trainable_fn)
        by_id = {c.trial_id: c for c in top}
        for result in reruns:
            run = kept_run(result, config, origin="seed")
            # A failed re-run is left out of the mean (and the count n says so).
            if run is not None:
                by_id[(result.config or {})["candidate"]].runs.append(run)
    reranked = rank(top, targets, use_mean=True)
    winner = reranked[0]
    metric, mode = targets[0]
    best_run = None
    for run in winner.runs:  # sweep run first: on a tie the later (re-)run wins, as in is_better
        if best_run is None or is_better(run.scores.get(metric), best_run.scores.get(metric), mode):
            best_run = run
    selection = Selection(winner=winner, run=best_run, ranked=ranked, reranked=reranked, num_trials=len(results))
    write_seed_runs(run_dir, reranked, targets, winner)
    return selection


# --- files -----------------------------------------------------------------------------------------

def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_pareto(run_dir: Path, candidates: list[Candidate], targets: list[tuple[str, str]]) -> list[dict]:
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pareto.csv").write_text(_csv(rows))
    payload = {"objectives": [{"metric": m, "mode": mode} for m, mode in targets], "rule": RANKING_RULE["multi"],
               "front": [r for r in rows if r["pareto_optimal"]], "trials": rows}
    (run_dir / "pareto.json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"[medsweep] Pareto front ({', '.join(f'{m} {mode}' for m, mode in targets)}): "
          + "; ".join(f"{r['trial_id']} " + " ".join(f"{m}={r[m]:.4f}" for m, _ in targets) for r in payload["front"]), flush=True)
    return rows


def write_seed_runs(run_dir: Path, reranked: list[Candidate], targets: list[tuple[str, str]], winner: Candidate) -> None:
    """seed_runs.csv: the top-k configurations after re-runs, best first, with per-seed values and mean ± std."""
    rows = []
    for position, c in enumerate(reranked, 1):
        row = {"rank": position, "trial_id": c.trial_id, "promoted": c is winner, "seeds": " ".join(str(r.seed) for r in c.runs)}
        for metric, _ in targets:
            row.update({f"{metric}_values": " ".join(f"{v:.4f}" for v in c.values(metric)),
                        f"{metric}_mean": c.mean(metric), f"{metric}_std": c.std(metric)})
        rows.append({**row, **flatten_values(c.params)})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "seed_runs.csv").write_text(_csv(rows))
    metric = targets[0][0]
    if not any(len(c.values(metric)) > 1 for c in reranked):
        return  # no seed re-runs: the leaderboard already says it all
    for row, c in zip(rows, reranked):
        print(f"[medsweep] {'*' if c is winner else ' '} {c.trial_id}: {metric} {c.mean(metric):.4f} ± {c.std(metric):.4f} "
              f"over seeds {row['seeds']}", flush=True)
