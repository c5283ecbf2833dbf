"""Which model gets promoted: seed re-runs of the top configurations, and the run whose checkpoint goes out.

Rules 3 and 4 of the promotion (rules 1 and 2, ranking, are medsweep/search/ranking.py's):

3. Seed robustness. The top `promote.top_k` configurations are re-trained once per seed in
   `promote.seeds` (same hyperparameters, only trainer.seed changes) as trials of a second Ray Tune
   Tuner, without early stopping. Each run scores its best evaluation, as in rule 1. The configuration
   whose mean over its runs (the sweep's own run included) ranks best by rule 2 wins.
4. The promoted checkpoint is the best step (rule 1) of the winning configuration's best run by
   the primary objective: the run itself may have been lucky, but the configuration was chosen on its
   mean, and the recorded mean ± std says how much a re-run can be expected to vary.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from medsweep.evaluation.metrics import best_of
from medsweep.search.ranking import (PROMOTED_RUN_RULE, RANKING_RULE, Candidate, Run, csv_text, kept_run, objectives,
                                     rank, rank_sweep)
from medsweep.search.space import flatten_values
from medsweep.search.sweep import build_tuner, console, tune_trial

SEEDS_EXPERIMENT = "seeds"


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


def seed_trial(params: dict, base_config: dict, sampled_by_candidate: dict, trainable_fn=tune_trial) -> None:
    """Ray Tune trainable of a seed re-run: a sweep configuration with another trainer.seed."""
    sampled = copy.deepcopy(sampled_by_candidate[params["candidate"]])
    sampled.setdefault("trainer", {})["seed"] = params["seed"]
    trainable_fn(sampled, base_config)


def rerun_with_seeds(config: dict, candidates: list[Candidate], seeds: list[int], trainable_fn=tune_trial):
    """Re-train each candidate once per seed as trials of a second Tuner; returns its ResultGrid.

    A Tuner rather than bare Ray tasks: the runs get the same trainable, resources, checkpoint
    keeping (best step by the primary metric), result files and console as the sweep (build_tuner).
    No scheduler: a re-run must train as long as any run of its configuration may have.
    """
    from ray import tune

    sweep = config["sweep"]
    by_id = {c.trial_id: c.params for c in candidates}
    # One grid point per (candidate trial id, seed); seed_runs.csv lists each candidate's hyperparameters.
    param_space = {"candidate": tune.grid_search(list(by_id)), "seed": tune.grid_search(list(seeds))}
    reporter = console(config, {"candidate": "candidate", "seed": "seed"}, {sweep["metric"]: sweep["metric"], "evaluation": "evals"},
                       seed_reruns=True)
    tuner = build_tuner(config, seed_trial, param_space, SEEDS_EXPERIMENT, reporter=reporter,
                        trainable_kwargs={"sampled_by_candidate": by_id, "trainable_fn": trainable_fn},
                        tune_config={"metric": sweep["metric"], "mode": sweep["mode"], "num_samples": 1,
                                     "max_concurrent_trials": sweep["max_concurrent"]})
    return tuner.fit()


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
    # Sweep run first: on a tie the later (re-)run wins, as everywhere (metrics.best_of).
    best_run = best_of(winner.runs, lambda run: run.scores.get(metric), mode)
    selection = Selection(winner=winner, run=best_run, ranked=ranked, reranked=reranked, num_trials=len(results))
    write_seed_runs(run_dir, reranked, targets, winner)
    return selection


# --- files ---------------------------------------------------------------------------------------

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
    (run_dir / "seed_runs.csv").write_text(csv_text(rows))
    metric = targets[0][0]
    if not any(len(c.values(metric)) > 1 for c in reranked):
        return  # no seed re-runs: the leaderboard already says it all
    for row, c in zip(rows, reranked):
        print(f"[medsweep] {'*' if c is winner else ' '} {c.trial_id}: {metric} {c.mean(metric):.4f} ± {c.std(metric):.4f} "
              f"over seeds {row['seeds']}", flush=True)
