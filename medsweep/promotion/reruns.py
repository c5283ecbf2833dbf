"""Running the re-runs promotion decided on (promotion/selection.py decides which): seed re-runs of
the top configurations, and the refit on all training rows, as trials of a second Ray Tune Tuner.

A Tuner rather than bare Ray tasks: the runs get the same trainable, resources, checkpoint keeping
(best step by the primary metric), result files and console as the sweep (search.sweep.build_tuner).
No scheduler: a re-run must train as long as any run of its configuration may have.
"""

from __future__ import annotations

import copy
import math

from medsweep.plan import primary
from medsweep.promotion.ranking import Candidate
from medsweep.rundir import SEEDS_EXPERIMENT, RunDir
from medsweep.search import driver
from medsweep.search.sweep import build_tuner, console, trainable_of, tune_trial


def seed_trial(params: dict, base_config: dict, sampled_by_candidate: dict, trainable_fn=tune_trial) -> None:
    """Ray Tune trainable of a seed re-run: a sweep configuration with another trainer.seed."""
    sampled = copy.deepcopy(sampled_by_candidate[params["candidate"]])
    sampled.setdefault("trainer", {})["seed"] = params["seed"]
    trainable_fn(sampled, base_config)


def rerun_with_seeds(config: dict, candidates: list[Candidate], seeds: list[int], trainable_fn=tune_trial):
    """Re-train each candidate once per seed; returns the Tuner's ResultGrid (each result's config is
    {candidate: trial id, seed}). An interrupted run of the same command is picked up where it stopped:
    the same sweep ranks the same candidates, so the re-runs that finished are kept."""
    from ray import tune

    sweep, objective = config["sweep"], primary(config)
    by_id = {c.trial_id: c.params for c in candidates}
    planned = len(by_id) * len(seeds)
    trainable_kwargs = {"sampled_by_candidate": by_id, "trainable_fn": trainable_fn}
    experiment = RunDir.of(config).experiment(SEEDS_EXPERIMENT)
    if tune.Tuner.can_restore(experiment):
        print(f"[medsweep] resuming the seed re-runs in {experiment}", flush=True)
        restored = tune.Tuner.restore(experiment, trainable=trainable_of(config, seed_trial, **trainable_kwargs),
                                      resume_unfinished=True, resume_errored=False, restart_errored=False)
        return driver.fit(restored, planned, "seed re-runs")
    # One grid point per (candidate trial id, seed); seed_runs.csv lists each candidate's hyperparameters.
    param_space = {"candidate": tune.grid_search(list(by_id)), "seed": tune.grid_search(list(seeds))}
    reporter = console(config, {"candidate": "candidate", "seed": "seed"},
                       {objective.metric: objective.metric, "evaluation": "evals"}, seed_reruns=True)
    tuner = build_tuner(config, seed_trial, param_space, SEEDS_EXPERIMENT, reporter=reporter,
                        trainable_kwargs=trainable_kwargs,
                        tune_config={"metric": objective.metric, "mode": objective.mode, "num_samples": 1,
                                     "max_concurrent_trials": sweep["max_concurrent"]})
    return driver.fit(tuner, planned, "seed re-runs")


def refit_config(config: dict, search_rows: int, all_rows: int) -> dict:
    """The config the refit runs train with: every training row, the same epochs, explicit step
    budgets scaled by the row ratio (promotion/selection.py's docstring says why epochs, not steps)."""
    refit = copy.deepcopy(config)
    refit["data"]["max_train_samples"] = None
    ratio = all_rows / search_rows
    trainer = refit["trainer"]
    for key in ("max_steps", "eval_every_steps"):
        if trainer[key]:
            trainer[key] = max(1, math.ceil(trainer[key] * ratio))
    return refit
