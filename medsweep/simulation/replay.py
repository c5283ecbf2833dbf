"""The replay trainable: a trial that reports a recorded learning curve through Tune exactly as a
medsweep trial does (the same metric names, one report per `trainer.evaluations` rung, each with a
small real checkpoint to resume from), sleeping the recorded seconds times replay.time_scale."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from medsweep.search.space import apply_overrides
from medsweep.simulation import curves

CHECKPOINT_FILE = "replay.json"


def evaluations_of(config: dict) -> int:
    """A replayed trial's evaluations: trainer.evaluations, else one per (whole) epoch."""
    return config["trainer"]["evaluations"] or max(1, round(config["trainer"]["epochs"]))


def replay_trial(sampled: dict, base_config: dict) -> None:
    """Ray Tune trainable (the same signature as search.sweep.tune_trial)."""
    import logging

    import ray
    from ray import tune

    # Ray logs every persisted checkpoint at INFO: one line per evaluation per trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    config = apply_overrides(base_config, sampled)
    evaluations = evaluations_of(config)
    points = curves.curve_of(config, evaluations)
    node_id = ray.get_runtime_context().get_node_id()
    first = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # A retried or resumed trial goes on after the last evaluation it reported.
        with checkpoint.as_directory() as directory:
            first = json.loads((Path(directory) / CHECKPOINT_FILE).read_text())["evaluation"] + 1
    scale, fixed = config["replay"]["time_scale"], config["replay"]["evaluation_s"]
    started = time.time()
    for evaluation in range(first, evaluations + 1):
        point = points[evaluation - 1]
        before = points[evaluation - 2]["seconds"] if evaluation > 1 else 0.0
        time.sleep(fixed if fixed is not None else max(0.0, point["seconds"] - before) * scale)
        metrics = {name: point[name] for name in curves.METRICS}
        metrics.update(evaluation=evaluation, step=point["epoch"], epoch=float(point["epoch"]),
                       simulated_seconds=point["seconds"], train_seconds=round(time.time() - started, 3),
                       final=evaluation == evaluations, node_id=node_id)
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / CHECKPOINT_FILE).write_text(json.dumps({"evaluation": evaluation, "sampled": sampled}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
