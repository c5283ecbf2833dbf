"""Say when the search range is wrong: the best trial at the edge of a numeric range, or still improving
at its last evaluation; and the moved space for one follow-up round (sweep.extend_edges).

A value "sits at the edge" when it lies in the outer EDGE_FRACTION of its range, measured on the scale
the dimension is sampled on (log for loguniform and log ints), because that is where the searcher could
not look further: a best trial there says the optimum may lie outside. A lower edge at 0 is a natural
limit (no warm-up, no dropout), not a range someone chose, and is not reported.
"""

from __future__ import annotations

import copy
import math

from medsweep.search.space import flatten

EDGE_FRACTION = 0.1
NUMERIC = ("loguniform", "uniform", "int")


def _log_scaled(spec: dict) -> bool:
    return spec["type"] == "loguniform" or (spec["type"] == "int" and bool(spec.get("log")))


def position(spec: dict, value: float) -> float:
    """Where `value` lies in its range, 0 (lower) to 1 (upper), on the dimension's sampling scale."""
    lower, upper = float(spec["lower"]), float(spec["upper"])
    if upper == lower:
        return 0.5
    if _log_scaled(spec):
        return (math.log(value) - math.log(lower)) / (math.log(upper) - math.log(lower))
    return (value - lower) / (upper - lower)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _leaf(params: dict, path: str):
    node = params
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def range_hints(best, results, config: dict) -> list[dict]:
    """What the sweep's best trial (`best`: promotion.ranking's Candidate, ranked first; None when
    no trial kept a checkpoint) says about its ranges: one dict per hint, with a `message` a person
    can act on ("widen trainer.learning_rate above 0.005 ...")."""
    if best is None:
        return []
    leaves = flatten(config["sweep"]["search_space"])
    results = list(results)
    hints = []
    for path, spec in leaves.items():
        value = _leaf(best.params, path)
        if spec["type"] not in NUMERIC or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # a choice has no edge; a conditional dimension the best trial did not draw
        where = position(spec, float(value))
        scale = " on a log scale" if _log_scaled(spec) else ""
        span = f"[{_fmt(spec['lower'])}, {_fmt(spec['upper'])}]"
        if where >= 1 - EDGE_FRACTION:
            hints.append({"kind": "range", "path": path, "edge": "upper", "value": value, "bound": spec["upper"],
                          "message": f"widen {path} above {_fmt(spec['upper'])}: the best trial drew {_fmt(value)}, "
                                     f"in the top {EDGE_FRACTION:.0%} of {span}{scale}"})
        elif where <= EDGE_FRACTION and spec["lower"] != 0:
            hints.append({"kind": "range", "path": path, "edge": "lower", "value": value, "bound": spec["lower"],
                          "message": f"widen {path} below {_fmt(spec['lower'])}: the best trial drew {_fmt(value)}, "
                                     f"in the bottom {EDGE_FRACTION:.0%} of {span}{scale}"})
    by_path = {str(r.path): r for r in results}
    last = getattr(by_path.get(best.runs[0].path), "metrics", None) or {}
    kept = best.runs[0].scores
    # Best step = the last evaluation of a trial that trained to its end (not one ASHA stopped):
    # it was still improving when its budget ran out.
    if last.get("final") and kept.get("evaluation") == last.get("evaluation") and last.get("evaluation", 0) > 1:
        epochs = _leaf(best.params, "trainer.epochs") or config["trainer"]["epochs"]
        hints.append({"kind": "steps", "path": "trainer.epochs", "edge": "upper", "value": epochs,
                      "step": kept.get("step"), "evaluation": kept.get("evaluation"),
                      "message": f"train longer (trainer.epochs above {_fmt(epochs)}): the best trial scored best at its "
                                 f"last evaluation ({kept.get('evaluation')}, step {kept.get('step')}), still improving"})
    return hints


def moved_range(spec: dict, hint: dict) -> dict:
    """The range of the follow-up round: as wide as before (on its sampling scale), starting at the
    best value and reaching out past the edge it sat at; the old interior was already searched and
    its best trial stays in the ranking."""
    lower, upper, value = float(spec["lower"]), float(spec["upper"]), float(hint["value"])
    if _log_scaled(spec):
        ratio = upper / lower
        new = (value, value * ratio) if hint["edge"] == "upper" else (value / ratio, value)
    else:
        width = upper - lower
        new = (value, value + width) if hint["edge"] == "upper" else (value - width, value)
        if lower >= 0:  # a non-negative setting stays non-negative
            new = (max(0.0, new[0]), new[1])
    moved = dict(spec)
    if spec["type"] == "int":
        low, high = math.floor(new[0]), math.ceil(new[1])
        moved.update(lower=max(1, low) if spec.get("log") else low, upper=max(high, low + 1))
    else:
        moved.update(lower=new[0], upper=new[1])
    return moved


def extended_config(config: dict, hints: list[dict]) -> dict | None:
    """The config of the follow-up round: the ranges the hints name moved, the rest as it was; None
    when no range hint can be acted on. Its first trials are the searcher's own (the base
    configuration and the given points were tried in the first round)."""
    range_hints_ = [h for h in hints if h["kind"] == "range"]
    if not range_hints_:
        return None
    extended = copy.deepcopy(config)
    sweep = extended["sweep"]
    for hint in range_hints_:
        node = sweep["search_space"]
        *parents, leaf = hint["path"].split(".")
        for part in parents:
            node = node[part]
        node[leaf] = moved_range(node[leaf], hint)
    sweep["try_base"] = False
    sweep["points_to_evaluate"] = []
    return extended


def describe_moves(before: dict, after: dict) -> str:
    old, new = flatten(before["sweep"]["search_space"]), flatten(after["sweep"]["search_space"])
    return "; ".join(f"{path} [{_fmt(old[path]['lower'])}, {_fmt(old[path]['upper'])}] -> "
                     f"[{_fmt(new[path]['lower'])}, {_fmt(new[path]['upper'])}]"
                     for path in new if new[path] != old[path])


def print_hints(hints: list[dict]) -> None:
    """The console's end-of-sweep lines."""
    for hint in hints:
        print(f"[medsweep] search range: {hint['message']}", flush=True)


def follow_up_round(plan, results, hints: list[dict], **run_kwargs):
    """sweep.extend_edges: when the best trial sat at a range's edge (`hints`, from range_hints), one
    more round of sweep.num_trials with those ranges moved past it (Ray experiment `sweep_extended`,
    the same leaderboard). Returns both rounds' results and the plan of the round that ran last (its
    ranges are what the promoted model's record shows); `run_kwargs` go to run_sweep."""
    from medsweep.rundir import EXTENDED_EXPERIMENT
    from medsweep.search import sweep

    config = plan.config
    extended = extended_config(config, hints)
    if extended is None:
        print("[medsweep] sweep.extend_edges: no best trial at a range's edge, no follow-up round", flush=True)
        return results, plan
    print(f"[medsweep] sweep.extend_edges: follow-up round of {config['sweep']['num_trials']} trial(s) with "
          f"{describe_moves(config, extended)}", flush=True)
    extended_plan = plan.with_config(extended)
    more = sweep.run_sweep(extended_plan, experiment=EXTENDED_EXPERIMENT, **run_kwargs)
    return [*results, *more], extended_plan
