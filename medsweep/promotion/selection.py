"""Which model gets promoted: seed re-runs of the top configurations, and the run whose checkpoint goes out.

Rules 3 and 4 of the promotion (rules 1 and 2, ranking, are medsweep/search/ranking.py's):

3. Seed robustness. The top `promote.top_k` configurations are re-trained once per seed in
   `promote.seeds` (same hyperparameters, only trainer.seed changes) as trials of a second Ray Tune
   Tuner, without early stopping. Each run scores its best evaluation, as in rule 1. The configuration
   whose mean over its runs (the sweep's own run included) ranks best by rule 2 wins.
4. The promoted checkpoint is the best step (rule 1) of the winning configuration's best run by
   the primary objective: the run itself may have been lucky, but the configuration was chosen on its
   mean, and the recorded mean ± std says how much a re-run can be expected to vary.

Refit (promote.refit, default on). A sweep may search on a subset of the training rows
(data.max_train_samples) to be cheap; the re-runs of rule 3 then train on ALL training rows instead
(validation and test rows never: they are other splits of the same data), once with trainer.seed and
once per extra seed, and rules 3 and 4 use those runs only (a subset run's score is not comparable
with a full run's). The budget kept is the number of epochs, not the number of steps: the learning
rate, warm-up fraction and schedule were chosen for that many passes over the data, and keeping the
steps would give the refit less than one pass over 1,859 rows where the search saw three over 500.
Each refit run still keeps its best evaluation step, so a configuration that peaked early is promoted
at its peak. Explicit step budgets (trainer.max_steps, trainer.eval_every_steps) are scaled by the
row ratio, so they too stand for the same number of passes and evaluations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

from medsweep.evaluation.metrics import best_of
from medsweep.search.edges import range_hints
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
    training: dict = field(default_factory=dict)  # which rows and how many steps trained the promoted run
    range_hints: list = field(default_factory=list)  # best trials at a range's edge (medsweep/search/edges.py)

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
                "refit": bool(self.training.get("refit")),
            },
            "range_hints": self.range_hints,
            "training": {**self.training, "steps": self.run.scores.get("step"), "epoch": self.run.scores.get("epoch")},
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


def training_rows(config: dict) -> tuple[dict, dict]:
    """(the rows the sweep's trials train on, all training rows): each {"rows", "fingerprint"}."""
    from medsweep import data

    searched = data.load_splits(config["data"])
    full = searched if config["data"]["max_train_samples"] is None else data.load_splits(dict(config["data"], max_train_samples=None))
    return ({"rows": len(searched.train), "fingerprint": searched.fingerprints["train"]},
            {"rows": len(full.train), "fingerprint": full.fingerprints["train"]})


def refit_config(config: dict, search_rows: int, all_rows: int) -> dict:
    """The config the refit runs train with: every training row, the same epochs, explicit step
    budgets scaled by the row ratio (see the module docstring for why epochs, not steps)."""
    refit = copy.deepcopy(config)
    refit["data"]["max_train_samples"] = None
    ratio = all_rows / search_rows
    trainer = refit["trainer"]
    for key in ("max_steps", "eval_every_steps"):
        if trainer[key]:
            trainer[key] = max(1, math.ceil(trainer[key] * ratio))
    return refit


def choose(results, config: dict, trainable_fn=tune_trial) -> Selection:
    """Rank the sweep, write the Pareto front (several objectives), re-run the top-k with the extra
    seeds (on all training rows when the sweep searched on a subset: promote.refit), and pick the
    configuration and run to promote."""
    targets = objectives(config["sweep"])
    promote = config["promote"]
    run_dir = Path(config["run_dir"])
    ranked = rank_sweep(results, config)
    top = ranked[:promote["top_k"]]
    searched, every = training_rows(config)
    training = {"rows": searched["rows"], "train_fingerprint": searched["fingerprint"], "refit": False,
                "all_training_rows": every["rows"]}
    # Re-running picks between configurations; a single run (no sweep) has nothing to pick between,
    # so it is promoted as it is rather than trained again.
    if len(ranked) < 2:
        if promote["seeds"] or (promote["refit"] and searched["rows"] < every["rows"]):
            print("[medsweep] one configuration, nothing to choose between: no seed re-runs or refit "
                  f"(promote.seeds and promote.refit apply to sweeps); promoted as trained, seed {config['trainer']['seed']}",
                  flush=True)
    elif promote["refit"] and searched["rows"] < every["rows"]:
        print(f"[medsweep] refit: the top {len(top)} configuration(s) re-trained on all {every['rows']} training rows "
              f"(the search used {searched['rows']}), seeds {[config['trainer']['seed'], *promote['seeds']]}", flush=True)
        reruns = rerun_with_seeds(refit_config(config, searched["rows"], every["rows"]), top,
                                  [config["trainer"]["seed"], *promote["seeds"]], trainable_fn)
        refits = {c.trial_id: [] for c in top}
        for result in reruns:
            run = kept_run(result, config, origin="refit")
            if run is not None:  # a failed refit is left out (the count n says so)
                refits[(result.config or {})["candidate"]].append(run)
        if any(refits.values()):
            for c in top:
                c.runs = refits[c.trial_id]
            training = {"rows": every["rows"], "train_fingerprint": every["fingerprint"], "refit": True,
                        "all_training_rows": every["rows"], "search_rows": searched["rows"],
                        "search_train_fingerprint": searched["fingerprint"]}
        else:
            print("[medsweep] every refit run failed: promoting from the search runs instead", flush=True)
    elif promote["seeds"]:
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
    selection = Selection(winner=winner, run=best_run, ranked=ranked, reranked=reranked, num_trials=len(results),
                          training=training, range_hints=range_hints(results, config) if len(ranked) > 1 else [])
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
