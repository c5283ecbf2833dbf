"""Which model gets promoted: which configurations are re-run, and the run whose checkpoint goes out.

Deciding only: the re-runs themselves are promotion/reruns.py's (a second Ray Tune Tuner).
Rules 3 and 4 of the promotion (rules 1 and 2, ranking, are promotion/ranking.py's):

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

from dataclasses import dataclass, field

from medsweep.plan import Plan, objectives
from medsweep.promotion import reruns
from medsweep.promotion.ranking import PROMOTED_RUN_RULE, RANKING_RULE, Candidate, Run, csv_text, kept_run, rank, rank_sweep
from medsweep.rundir import RunDir, atomic_write
from medsweep.search.edges import range_hints
from medsweep.search.space import flatten_values
from medsweep.search.sweep import tune_trial


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
        targets = objectives(config)
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


def choose(plan: Plan, results, trainable_fn=tune_trial) -> Selection:
    """Rank the sweep, write the Pareto front (several objectives), re-run the top-k with the extra
    seeds (on all training rows when the sweep searched on a subset: promote.refit), and pick the
    configuration and run to promote."""
    config, targets = plan.config, plan.objectives
    ranked = rank_sweep(results, config)
    top = ranked[:config["promote"]["top_k"]]
    searched, every = plan.training_rows()
    training = {"rows": searched["rows"], "train_fingerprint": searched["fingerprint"], "refit": False,
                "all_training_rows": every["rows"]}
    kind = rerun_kind(config, len(ranked), searched["rows"], every["rows"])
    if kind == "refit":
        if refit(config, top, searched["rows"], every["rows"], trainable_fn):
            training = {"rows": every["rows"], "train_fingerprint": every["fingerprint"], "refit": True,
                        "all_training_rows": every["rows"], "search_rows": searched["rows"],
                        "search_train_fingerprint": searched["fingerprint"]}
    elif kind == "seeds":
        reseed(config, top, trainable_fn)
    reranked = rank(top, targets, use_mean=True)
    winner = reranked[0]
    # Sweep run first: on a tie the later (re-)run wins, as everywhere (Objective.best).
    best_run = plan.primary.best(winner.runs, lambda run: run.scores.get(plan.metric))
    hints = range_hints(ranked[0], results, config) if len(ranked) > 1 else []
    selection = Selection(winner=winner, run=best_run, ranked=ranked, reranked=reranked, num_trials=len(results),
                          training=training, range_hints=hints)
    write_seed_runs(plan.run_dir, reranked, targets, winner)
    return selection


def rerun_kind(config: dict, num_configurations: int, search_rows: int, all_rows: int) -> str | None:
    """What promotion re-runs: "refit" (the sweep searched on a subset), "seeds", or None.
    Re-running picks between configurations; a single run (no sweep) has nothing to pick between,
    so it is promoted as it is rather than trained again."""
    promote = config["promote"]
    subset = promote["refit"] and search_rows < all_rows
    if num_configurations < 2:
        if promote["seeds"] or subset:
            print("[medsweep] one configuration, nothing to choose between: no seed re-runs or refit "
                  f"(promote.seeds and promote.refit apply to sweeps); promoted as trained, seed {config['trainer']['seed']}",
                  flush=True)
        return None
    return "refit" if subset else "seeds" if promote["seeds"] else None


def refit(config: dict, top: list[Candidate], search_rows: int, all_rows: int, trainable_fn) -> bool:
    """Re-train the top configurations on all training rows with trainer.seed and each extra seed;
    their runs replace the search runs. False (and the search runs kept) when every refit failed."""
    seeds = [config["trainer"]["seed"], *config["promote"]["seeds"]]
    print(f"[medsweep] refit: the top {len(top)} configuration(s) re-trained on all {all_rows} training rows "
          f"(the search used {search_rows}), seeds {seeds}", flush=True)
    results = reruns.rerun_with_seeds(reruns.refit_config(config, search_rows, all_rows), top, seeds, trainable_fn)
    refits = {c.trial_id: [] for c in top}
    for result in results:
        run = kept_run(result, config, origin="refit")
        if run is not None:  # a failed refit is left out (the count n says so)
            refits[(result.config or {})["candidate"]].append(run)
    if not any(refits.values()):
        print("[medsweep] every refit run failed: promoting from the search runs instead", flush=True)
        return False
    for c in top:
        c.runs = refits[c.trial_id]
    return True


def reseed(config: dict, top: list[Candidate], trainable_fn) -> None:
    """Re-train the top configurations with each extra seed; the runs join their sweep run."""
    by_id = {c.trial_id: c for c in top}
    for result in reruns.rerun_with_seeds(config, top, config["promote"]["seeds"], trainable_fn):
        run = kept_run(result, config, origin="seed")
        # A failed re-run is left out of the mean (and the count n says so).
        if run is not None:
            by_id[(result.config or {})["candidate"]].runs.append(run)


# --- files ---------------------------------------------------------------------------------------

def write_seed_runs(run_dir: RunDir, reranked: list[Candidate], targets: list[tuple[str, str]], winner: Candidate) -> None:
    """seed_runs.csv: the top-k configurations after re-runs, best first, with per-seed values and mean ± std."""
    rows = []
    for position, c in enumerate(reranked, 1):
        row = {"rank": position, "trial_id": c.trial_id, "promoted": c is winner, "seeds": " ".join(str(r.seed) for r in c.runs)}
        for metric, _ in targets:
            row.update({f"{metric}_values": " ".join(f"{v:.4f}" for v in c.values(metric)),
                        f"{metric}_mean": c.mean(metric), f"{metric}_std": c.std(metric)})
        rows.append({**row, **flatten_values(c.params)})
    atomic_write(run_dir.seed_runs, csv_text(rows))
    metric = targets[0][0]
    if not any(len(c.values(metric)) > 1 for c in reranked):
        return  # no seed re-runs: the leaderboard already says it all
    for row, c in zip(rows, reranked):
        print(f"[medsweep] {'*' if c is winner else ' '} {c.trial_id}: {metric} {c.mean(metric):.4f} ± {c.std(metric):.4f} "
              f"over seeds {row['seeds']}", flush=True)
