"""The promotion stage: choose, then release; a checkpoint that cannot be read falls back to the next.

A checkpoint can go missing or be damaged between the search and promotion (a disk error, a
storage sync that did not finish, a person tidying up): its weights then fail the sha256 recorded
in its trial.json, or its files are gone. That costs the candidate, not the run: promotion says so
in one line and releases the next one in the order the selection ranked them (the winner's other
runs, then the next configurations'), so what is promoted is always the best readable model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medsweep.config import ConfigError
from medsweep.plan import Plan
from medsweep.promotion import gate, release, selection
from medsweep.promotion.ranking import Candidate, NoUsableTrial, Run
from medsweep.release import layout
from medsweep.search.sweep import tune_trial
from medsweep.training.model import read_checkpoint_info


def fallbacks(chosen: selection.Selection, objective) -> list[tuple[Candidate, Run]]:
    """Every (configuration, run) that could be promoted, in order: the chosen run, the winner's
    other runs, then each next configuration's runs (after re-runs), then the rest of the sweep."""
    pairs = [(chosen.winner, chosen.run)]
    for candidate in [chosen.winner, *chosen.reranked, *chosen.ranked]:
        pairs += [(candidate, run) for run in best_first(candidate.runs, objective)]
    seen, order = set(), []
    for candidate, run in pairs:
        if id(run) not in seen:
            seen.add(id(run))
            order.append((candidate, run))
    return order


def best_first(runs: list[Run], objective) -> list[Run]:
    """Runs best first by the primary objective, by the one rule (Objective.best; NaN last)."""
    remaining, out = list(runs), []
    while remaining:
        best = objective.best(remaining, lambda run: run.scores.get(objective.metric))
        out.append(best)
        remaining.remove(best)
    return out


def readable(run: Run) -> str | None:
    """Why the run's checkpoint cannot be promoted, or None when it can be read and its weights
    match their recorded digests."""
    try:
        with run.checkpoint.as_directory() as directory:
            read_checkpoint_info(Path(directory))
    except (ConfigError, OSError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def promote(plan: Plan, results, trainable_fn=tune_trial) -> dict:
    """Choose the model (selection) and release it; returns the promoted folder's metrics.json."""
    return release_chosen(plan, selection.choose(plan, results, trainable_fn))


def release_chosen(plan: Plan, chosen: selection.Selection) -> dict:
    """Release the chosen run's checkpoint, or the next readable one (see the module docstring);
    returns the promoted folder's metrics.json."""
    config = plan.config
    # promote.gate: the candidate must not be significantly worse than the earlier promoted model; checked
    # once its test split is scored, before the link is swapped (a block raises gate.Blocked, not a fallback).
    check = gate.for_plan(plan)
    for candidate, run in fallbacks(chosen, plan.primary):
        problem = readable(run)
        if problem is not None:
            print(f"[medsweep] the checkpoint of trial {candidate.trial_id} (seed {run.seed}) cannot be promoted "
                  f"({problem}); trying the next candidate", flush=True)
            continue
        picked = dataclasses.replace(chosen, winner=candidate, run=run)
        with run.checkpoint.as_directory() as checkpoint_dir:
            promoted = release.promote_checkpoint(checkpoint_dir, plan.run_dir.root, picked.provenance(config),
                                                  trust_remote_code=config["model"]["trust_remote_code"],
                                                  splits=plan.splits, gate=check)
        return layout.read_metrics(promoted)
    raise NoUsableTrial("no trial's checkpoint could be read for promotion (see the lines above)")
