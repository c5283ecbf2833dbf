"""The sweep: Ray Tune fans trials out, Optuna (TPE) proposes them, ASHA stops the weak ones early.

A run without a search space is the same path with one trial.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

from medsweep import data, tracking
from medsweep.config import ConfigError, validate
from medsweep.metrics import METRIC_NAMES
from medsweep.model import check_available
from medsweep.search_space import apply_overrides, build_search_space, flatten

REPORTED_METRICS = tuple(f"val_{name}" for name in METRIC_NAMES)
# Environment every trial process gets: quiet, deterministic tokenizers, no HF telemetry.
TRIAL_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
}


def tune_trial(sampled: dict, base_config: dict) -> None:
    """Ray Tune trainable: the sampled hyperparameters written into the base config, then a trial."""
    import logging

    from ray import tune

    from medsweep.trial import run_trial

    # Ray logs every persisted checkpoint at INFO: one line per evaluation per trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    run_trial(apply_overrides(base_config, sampled), on_evaluation=report)


def preflight(config: dict) -> tuple[dict, data.DataSplits]:
    """Everything that can be checked before Ray starts. Raises ConfigError with one sentence."""
    validate(config)
    sweep = config["sweep"]
    if sweep["metric"] not in REPORTED_METRICS:
        raise ConfigError(f"sweep.metric {sweep['metric']!r} is not reported by trials; choose one of {list(REPORTED_METRICS)}")
    space = build_search_space(sweep["search_space"], config)
    if sweep["num_trials"] > 1 and not space:
        raise ConfigError("sweep.num_trials > 1 but sweep.search_space is empty: every trial would be the same")
    cluster = config["cluster"]
    if cluster["address"] is None:
        cores = cluster["num_cpus"] or os.cpu_count() or 1
        if cluster["cpus_per_trial"] > cores:
            raise ConfigError(f"cluster.cpus_per_trial={cluster['cpus_per_trial']} but this machine has {cores} CPUs: no trial could start")
    else:
        check_reachable(cluster["address"])
    check_available(config["model"]["name_or_path"], config["model"]["revision"])
    tracking.check(config)
    splits = data.load_splits(config["data"])
    return space, splits


def check_reachable(address: str) -> None:
    """A host:port that does not answer fails here in seconds, instead of ray.init hanging."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"cluster.address must be 'auto' or host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cluster.address {address!r} cannot be reached: {exc}") from None


def init_ray(cluster: dict) -> None:
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": TRIAL_ENV}
    if cluster["address"] is None:
        ray.init(num_cpus=cluster["num_cpus"], include_dashboard=False, runtime_env=runtime_env,
                 configure_logging=True, logging_level="WARNING")
    else:
        try:
            ray.init(address=cluster["address"], runtime_env=runtime_env, logging_level="WARNING")
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {cluster['address']!r}: {exc}") from None


def build_searcher(config: dict, space: dict):
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    sweep = config["sweep"]
    if space and sweep["searcher"] == "optuna":
        import optuna

        # TPE seeded: the same sweep proposes the same trials (up to Ray's scheduling order).
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep["seed"]))
    return BasicVariantGenerator(random_state=sweep["seed"])


def max_evaluations(config: dict, num_train: int) -> int:
    """The most evaluations any trial of this sweep can run: ASHA's max_t (its rungs stop there)."""
    trainer = config["trainer"]
    leaves = {path: spec for path, spec in flatten(config["sweep"]["search_space"]).items()}

    def extreme(path: str, largest: bool):
        spec = leaves.get(path)
        if spec is None:
            return trainer[path.split(".")[-1]]
        if spec["type"] == "choice":
            return (max if largest else min)(spec["values"])
        return spec["upper"] if largest else spec["lower"]

    epochs = extreme("trainer.epochs", largest=True)
    smallest_batch = extreme("trainer.batch_size", largest=False) * extreme("trainer.gradient_accumulation_steps", largest=False)
    steps_per_epoch = math.ceil(num_train / smallest_batch)
    total_steps = trainer["max_steps"] or math.ceil(steps_per_epoch * epochs)
    if trainer["eval_every_steps"]:
        return max(1, math.ceil(total_steps / trainer["eval_every_steps"]))
    return max(1, math.ceil(min(epochs, total_steps / steps_per_epoch)))


def build_scheduler(config: dict, num_train: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep = config["sweep"]
    if sweep["scheduler"] == "asha" and sweep["num_trials"] > 1:
        # Trials report once per evaluation, so ASHA's time unit is evaluations.
        return ASHAScheduler(time_attr="training_iteration", max_t=max_evaluations(config, num_train),
                             grace_period=sweep["grace_period"], reduction_factor=sweep["reduction_factor"])
    return FIFOScheduler()


def run_sweep(config: dict, space: dict, num_train: int, trainable_fn=tune_trial):
    """Run all trials; returns Ray's ResultGrid. The leaderboard is written as trials finish."""
    from ray import tune

    from medsweep.leaderboard import Leaderboard
    from medsweep.progress import CompactReporter

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The classic reporter prints one compact table (the columns below) instead of a box per result.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    sweep, cluster = config["sweep"], config["cluster"]
    run_dir = Path(config["run_dir"]).resolve()
    storage = cluster["storage_path"] or str(run_dir / "ray")
    init_ray(cluster)

    resources = {"cpu": cluster["cpus_per_trial"], "gpu": cluster["gpus_per_trial"]}
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, base_config=config), resources)
    param_names = sorted(flatten(sweep["search_space"]))
    reporter = CompactReporter(
        # Ray flattens nested params with "/"; show "lora.r" rather than "model/lora/r".
        parameter_columns={name.replace(".", "/"): name.split(".", 1)[-1] for name in param_names},
        metric_columns={sweep["metric"]: sweep["metric"], "evaluation": "evals", "step": "step"},
        max_report_frequency=30, sort_by_metric=True, max_progress_rows=20, max_error_rows=5,
    )
    trackers = tracking.trial_callbacks(config)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep["metric"], mode=sweep["mode"], num_samples=sweep["num_trials"],
            max_concurrent_trials=sweep["max_concurrent"],
            search_alg=build_searcher(config, space), scheduler=build_scheduler(config, num_train),
        ),
        run_config=tune.RunConfig(
            name="sweep",
            storage_path=storage,
            # One checkpoint per trial, its best evaluation: that is what promotion needs.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=sweep["metric"], checkpoint_score_order=sweep["mode"]),
            callbacks=[Leaderboard(run_dir, sweep["metric"], sweep["mode"], param_names), *trackers],
            progress_reporter=reporter,
            verbose=1,
        ),
    )
    try:
        return tuner.fit()
    finally:
        tracking.finish_callbacks(trackers)  # an interrupted sweep still closes its tracker runs


def best_checkpoint(results, config: dict):
    """The best evaluation step over all trials and its checkpoint: (Result, Checkpoint)."""
    metric, mode = config["sweep"]["metric"], config["sweep"]["mode"]
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError as exc:
        errors = [str(r.error).splitlines()[0] for r in results if r.error]
        raise RuntimeError(f"no trial reported {metric}: {errors[:3] or exc}") from None
    checkpoint = best.get_best_checkpoint(metric=metric, mode=mode)
    if checkpoint is None:
        raise RuntimeError(f"the best trial ({best.path}) kept no checkpoint")
    return best, checkpoint


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
