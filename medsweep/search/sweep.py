"""The sweep: Ray Tune fans trials out, Optuna (TPE) proposes them, ASHA stops the weak ones early.

A run without a search space is the same path with one trial.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

from medsweep import data
from medsweep.config import ConfigError, validate
from medsweep.evaluation.metrics import BINARY_METRIC_NAMES, METRIC_NAMES, PER_CLASS_F1, WORST_GROUP_METRIC_NAMES, metric_names
from medsweep.plan import Plan, objectives, primary
from medsweep.rundir import EXTENDED_EXPERIMENT, SWEEP_EXPERIMENT, RunDir
from medsweep.search import checkpoints, driver, resources, resume, study
from medsweep.search.space import SearchSpace, apply_overrides, sweep_points
from medsweep.training.imbalance import max_training_rows
from medsweep.training.model import check_available, check_lora_targets
from medsweep.training.precision import check_precision

EXPERIMENT_NAME = SWEEP_EXPERIMENT  # kept: experiment scripts name the first round by it
# Names a trial can report; which of them a task reports depends on its classes (metric_names):
# binary tasks add sensitivity/specificity, and per-class F1 is val_f1_class_<index>.
REPORTED_METRICS = tuple(f"val_{name}" for name in METRIC_NAMES + BINARY_METRIC_NAMES)
# Environment every trial process gets: quiet, deterministic tokenizers, no HF telemetry.
TRIAL_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
}
# Ray's internal settings for an embedded (local) cluster; see init_ray.
LOCAL_RAY_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                           "enable_metrics_collection": False}


def tune_trial(sampled: dict, base_config: dict) -> None:
    """Ray Tune trainable: the sampled hyperparameters written into the base config, then a trial."""
    import logging

    from ray import tune

    from medsweep.training.trial import run_trial

    # Ray logs every persisted checkpoint at INFO: one line per evaluation per trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)

    import ray

    # Which node trained it: for operators reading a cluster sweep's results.
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        tune.report(dict(metrics, node_id=node_id), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    config = apply_overrides(base_config, sampled)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(config, on_evaluation=report)
        return
    # Ray restarted this trial (a failure with retries left, or a resumed sweep): continue from
    # the last checkpoint it reported instead of training from scratch.
    with checkpoint.as_directory() as directory:
        run_trial(config, on_evaluation=report, resume_from=directory)


def check_metric_names(config: dict, num_classes: int | None = None) -> None:
    """Every objective must be a metric trials report (for this task, once its classes are known)."""
    grouped = bool(config["data"]["group_columns"])
    allowed = list(REPORTED_METRICS) + [f"val_{PER_CLASS_F1}<index>"]
    for metric in (objective.metric for objective in objectives(config)):
        if metric[len("val_"):] in WORST_GROUP_METRIC_NAMES and metric.startswith("val_"):
            if not grouped:
                raise ConfigError(f"sweep.metric {metric!r} needs data.group_columns (the groups to take the worst of)")
            continue
        known = metric in REPORTED_METRICS or metric.startswith(f"val_{PER_CLASS_F1}") and metric[len(f"val_{PER_CLASS_F1}"):].isdigit()
        if not known:
            raise ConfigError(f"sweep.metric {metric!r} is not reported by trials; choose one of {allowed}"
                              + (f" or {['val_' + n for n in WORST_GROUP_METRIC_NAMES]}" if grouped else ""))
        if num_classes is not None and metric[len("val_"):] not in metric_names(num_classes):
            raise ConfigError(f"sweep.metric {metric!r} is not reported for a {num_classes}-class task; "
                              f"it reports {['val_' + n for n in metric_names(num_classes, grouped)]}")


def preflight(config: dict) -> Plan:
    """Everything that can be checked before Ray starts, then the plan every later stage reads.
    Raises ConfigError with one sentence. The data is read here, once per sweep."""
    validate(config)
    check_precision(config["model"], config["cluster"])
    sweep = config["sweep"]
    check_metric_names(config)
    space = SearchSpace(sweep["search_space"])
    space.ray(config)  # checks every dimension against the config it overrides
    sweep_points(config)
    if sweep["num_trials"] > 1 and not space:
        raise ConfigError("sweep.num_trials > 1 but sweep.search_space is empty: every trial would be the same")
    cluster = config["cluster"]
    if config["replay"]["source"] is not None:
        from medsweep.simulation import curves

        curves.check_source(config)
    if cluster["simulate"]["nodes"]:
        if cluster["cpus_per_trial"] > cluster["simulate"]["cpus_per_node"]:
            raise ConfigError(f"cluster.cpus_per_trial={cluster['cpus_per_trial']} but each simulated node declares "
                              f"{cluster['simulate']['cpus_per_node']} CPUs: no trial could start")
    elif cluster["address"] is None:
        cores = cluster["num_cpus"] or os.cpu_count() or 1
        if cluster["cpus_per_trial"] > cores:
            raise ConfigError(f"cluster.cpus_per_trial={cluster['cpus_per_trial']} but this machine has {cores} CPUs: no trial could start")
    else:
        check_reachable(cluster["address"])
    # A space that searches model.finetune can draw LoRA trials: check their targets too.
    can_draw_lora = "lora" in space.values("model.finetune")
    check_available(config["model"]["name_or_path"], config["model"]["revision"], config["model"]["trust_remote_code"])
    check_lora_targets(dict(config["model"], finetune="lora") if can_draw_lora else config["model"], sweep["search_space"])
    splits = data.load_splits(config["data"])
    check_metric_names(config, len(splits.label_names))
    if space and sweep["searcher"] == "optuna":
        study.check_storage(config)
    study.warm_start_trials(config, splits.fingerprints)  # refused here, before Ray, if not comparable
    return Plan(config=config, objectives=objectives(config), space=space, splits=splits, run_dir=RunDir.of(config),
                num_train=max_training_rows(splits.train, config))


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
    if cluster["simulate"]["nodes"]:
        from medsweep.simulation import cluster as simulated

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(quiet_token_notice)
        ray.init(address=simulated.start(cluster["simulate"]).address, runtime_env=runtime_env, logging_level="WARNING")
    elif cluster["address"] is None:
        # address="local": always a fresh embedded Ray, even when RAY_ADDRESS (set by an earlier
        # ray.init in this environment, or by a cluster shell) points elsewhere.
        # On a small machine Ray's fixed costs compete with the trials for the cores: no usage-stats
        # reporter, and no worker processes prestarted at init (Ray starts one per CPU, idle, and a
        # trial with our runtime_env cannot use them anyway); metrics collection is for the
        # dashboard, which is off.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray turns token authentication on for a new local cluster and says so on every run, a line a
        # user cannot act on: that one line is dropped, the (secure) mode and every other warning kept.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(quiet_token_notice)
        ray.init(address="local", num_cpus=cluster["num_cpus"], include_dashboard=False, runtime_env=runtime_env,
                 configure_logging=True, logging_level="WARNING", _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    else:
        try:
            ray.init(address=cluster["address"], runtime_env=runtime_env, logging_level="WARNING")
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {cluster['address']!r}: {exc}") from None


def quiet_token_notice(record) -> bool:
    """A logging filter: False for Ray's "token authentication is enabled" notice (see init_ray)."""
    return not str(record.msg).startswith("Token authentication is enabled")


def build_searcher(config: dict, space: dict, experiment: str = SWEEP_EXPERIMENT):
    """The searcher of an experiment: Optuna's TPE recording into the sweep's study (study.py), or
    Ray's random search. `space`: the Tune domains (SearchSpace.ray)."""
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.utils.util import unflatten_dict

    sweep = config["sweep"]
    # The given points, then the base configuration (never worse than not sweeping).
    points, _ = sweep_points(config)
    if space and sweep["searcher"] == "optuna":
        sampler = make_sampler(sweep)
        targets = objectives(config)
        # The study lives in storage others can read (study.py): a dashboard, another driver, a warm start.
        recorded = {"study_name": study.study_name(config), "storage": study.open_storage(study.storage_url(config)),
                    "experiment": RunDir.of(config).experiment(experiment), "warm_trials": study.warm_start_trials(config),
                    "sampler": sampler, "points_to_evaluate": points or None}
        # A conditional space (model.finetune searched) is sampled define-by-run; Tune then gets no param_space.
        conditional = SearchSpace(sweep["search_space"]).define_by_run()
        if len(targets) > 1:
            # Multi-objective: Ray's OptunaSearch takes the lists itself (not TuneConfig) and tells
            # Optuna each trial's last reported values.
            return study.make_searcher(space=conditional, metric=[t.metric for t in targets],
                                       mode=[t.mode for t in targets], **recorded)
        if conditional is not None:
            return study.make_searcher(space=conditional, metric=targets[0].metric, mode=targets[0].mode, **recorded)
        return study.make_searcher(**recorded)
    # The random searcher takes the points nested, as the param space is.
    nested = [unflatten_dict(point, delimiter="/") for point in points]
    # Tune ignores TuneConfig.max_concurrent_trials for this generator: it takes the limit itself.
    return BasicVariantGenerator(random_state=sweep["seed"], points_to_evaluate=nested or None,
                                 max_concurrent=sweep["max_concurrent"])


def make_sampler(sweep: dict):
    """The sweep's Optuna sampler: TPE, seeded (the same sweep proposes the same trials, up to Ray's
    scheduling order), with sweep.startup_trials random trials first and sweep.constant_liar."""
    import optuna

    return optuna.samplers.TPESampler(seed=sweep["seed"], n_startup_trials=startup_trials(sweep),
                                      constant_liar=sweep["constant_liar"])


def startup_trials(sweep: dict) -> int:
    """How many random trials TPE takes before it models the results: sweep.startup_trials, or a
    third of the budget (2 to 10), so that a small sweep still gets guided trials."""
    if sweep["startup_trials"] is not None:
        return sweep["startup_trials"]
    return min(10, max(2, sweep["num_trials"] // 3))


def trainer_extreme(config: dict, key: str, largest: bool):
    """The largest (or smallest) value trainer.<key> can take in this sweep (SearchSpace.extreme)."""
    return SearchSpace(config["sweep"]["search_space"]).extreme(f"trainer.{key}", config, largest)


def max_evaluations(config: dict, num_train: int) -> int:
    """The most evaluations any trial of this sweep can run: the schedulers' max_t (their rungs stop there)."""
    from medsweep.training.trial import optimizer_steps

    trainer = config["trainer"]
    if trainer["evaluations"]:
        return trainer["evaluations"]
    longest = dict(trainer, epochs=trainer_extreme(config, "epochs", largest=True),
                   batch_size=trainer_extreme(config, "batch_size", largest=False),
                   gradient_accumulation_steps=trainer_extreme(config, "gradient_accumulation_steps", largest=False))
    total_steps = optimizer_steps(longest, num_train)
    if trainer["eval_every_steps"]:
        return max(1, math.ceil(total_steps / trainer["eval_every_steps"]))
    steps_per_epoch = optimizer_steps(dict(longest, epochs=1, max_steps=None), num_train)
    return max(1, math.ceil(min(longest["epochs"], total_steps / steps_per_epoch)))


def build_scheduler(config: dict, num_train: int):
    """sweep.scheduler as a Ray Tune scheduler. Trials report once per evaluation, so the time unit
    is evaluations (training_iteration): with trainer.evaluations=N every trial's rungs sit at the
    same fractions of its own budget."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    sweep = config["sweep"]
    name = sweep["scheduler"]
    if name in ("fifo", "none") or sweep["num_trials"] == 1:
        return FIFOScheduler()
    # The schedulers rank trials by one number: with several objectives TuneConfig names no metric,
    # and the scheduler is given the primary one (Ray refuses a metric set in both places).
    first, targets = primary(config), objectives(config)
    primary_only = {"metric": first.metric, "mode": first.mode} if len(targets) > 1 else {}
    max_t = max_evaluations(config, num_train)
    if name == "hyperband":
        # Synchronous brackets: trials pause at each rung until their bracket is complete, then the
        # best 1/reduction_factor continue from their checkpoint (tune_trial resumes from it).
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                  reduction_factor=sweep["reduction_factor"], **primary_only)
    grace = grace_period(sweep, max_t)
    if name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=grace,
                                  min_samples_required=2, **primary_only)
    hint = first_rung_hint(config)
    if hint:
        print(f"[medsweep] early stopping: {hint}", flush=True)
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, **primary_only,
                         grace_period=grace, reduction_factor=sweep["reduction_factor"],
                         brackets=sweep["brackets"])


def grace_period(sweep: dict, max_t: int) -> int:
    """The first rung, in evaluations: sweep.grace_period, or a third of a trial's evaluations
    rounded up (what the simulated-clock measurements chose, config.py says where)."""
    if sweep["grace_period"] is not None:
        return sweep["grace_period"]
    return max(1, math.ceil(max_t / 3))


def first_rung_hint(config: dict) -> str | None:
    """A sentence when ASHA's first rung comes before some trials have finished their learning-rate
    warm-up: a rung there ranks how fast trials start, not how well they learn, and stops the slow
    starters (seen on lr_lora: three trials stopped at 16 steps, docs/benchmarks.md). None otherwise,
    and when rungs are not fractions of a trial (trainer.evaluations unset)."""
    evaluations = config["trainer"]["evaluations"]
    if not evaluations:
        return None
    grace = grace_period(config["sweep"], evaluations)
    if grace >= evaluations:
        return None
    warmup = trainer_extreme(config, "warmup_ratio", largest=True)
    if grace / evaluations > warmup:
        return None
    after = math.floor(warmup * evaluations) + 1
    advice = (f"set sweep.grace_period={after}" if after < evaluations
              else "lower trainer.warmup_ratio or add trainer.evaluations")
    return (f"the first rung (evaluation {grace} of {evaluations}, {grace / evaluations:.0%} of each trial's steps) "
            f"comes before the end of a warm-up of up to {warmup:.0%} of the steps, so it ranks how fast trials start; "
            f"{advice} to rank them after it")


def build_tuner(config: dict, function, param_space: dict, name: str, *, tune_config: dict, reporter,
                callbacks: list = (), trainable_kwargs: dict | None = None, stop=None):
    """The one place a Tuner is made, for the sweep and for the seed re-runs: the same trainable
    resources, storage, checkpoint keeping (a finished trial keeps its best evaluation by the primary
    metric, what promotion needs, and its latest, to resume from; checkpoints.py with
    cluster.periodic_saves), retries and console."""
    from ray import tune

    sweep, objective = config["sweep"], primary(config)
    periodic = config["cluster"]["periodic_saves"]
    return tune.Tuner(
        trainable_of(config, function, **(trainable_kwargs or {})),
        param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=config["cluster"]["reuse_actors"], **tune_config),
        run_config=tune.RunConfig(
            name=name,
            storage_path=RunDir.of(config).ray_storage,
            # num_to_keep=1 makes Ray save its whole experiment state after every trial checkpoint;
            # cluster.periodic_saves: Ray keeps them all and KeepBest deletes a finished trial's others.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if periodic else 1,
                                                    checkpoint_score_attribute=objective.metric,
                                                    checkpoint_score_order=objective.mode),
            # A failed trial (node lost, transient error) is retried from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=sweep["max_failures"]),
            callbacks=[*callbacks, *([checkpoints.KeepBest()] if periodic else [])],
            stop=stop,
            progress_reporter=reporter,
            verbose=1,
        ),
    )


def trainable_of(config: dict, function, **parameters):
    """`function(sampled, base_config=config, **parameters)` with each trial's resources (Ray started)."""
    from ray import tune

    cluster = config["cluster"]
    init_ray(cluster)
    resources.resolve_gpus_per_trial(config)  # "auto": measured once, before the first trial, then a number
    # Ray runs each trial in its own working directory: paths in the config a trial resolves itself
    # (the token cache under the run dir) must be absolute.
    config = dict(config, run_dir=str(Path(config["run_dir"]).resolve()))
    return tune.with_resources(tune.with_parameters(function, base_config=config, **parameters),
                               {"cpu": cluster["cpus_per_trial"], "gpu": cluster["gpus_per_trial"]})


def console(config: dict, parameters: dict[str, str], metrics: dict[str, str], seed_reruns: bool = False):
    from medsweep.search.console import PROMOTION_S, SweepConsole

    sweep, promote = config["sweep"], config["promote"]
    # The ETA counts what follows this experiment: the seed re-runs (seeds.choose) and promotion.
    later = (min(promote["top_k"], sweep["num_trials"]) * len(promote["seeds"])
             if promote["enabled"] and promote["seeds"] and sweep["num_trials"] > 1 and not seed_reruns else 0)
    objective = primary(config)
    # A replayed trial (medsweep/simulation) tells no optimizer steps: no board, no steps column, and
    # no waiting up to 4 s for the board's last answer at the end.
    return SweepConsole(parameters, metrics, objective.metric, objective.mode, concurrency=sweep["max_concurrent"],
                        later_trials=later, later_s=PROMOTION_S if promote["enabled"] else 0.0,
                        board=config["replay"]["source"] is None)


def trial_function(config: dict):
    """What a trial runs: a fine-tune, or (replay.source set) a replayed learning curve."""
    if config["replay"]["source"] is None:
        return tune_trial
    from medsweep.simulation import curves, replay

    curves.start_server(config)  # owned by the driver: it outlives any trial, and any simulated node
    return replay.replay_trial


def run_sweep(plan: Plan, trainable_fn=None, callbacks: list = (), experiment: str = SWEEP_EXPERIMENT,
              param_space: dict | None = None):
    """Run all trials of the plan; returns Ray's ResultGrid. The leaderboard is written as trials
    finish; `callbacks` (the trackers' Ray callbacks) see every result too. `param_space`: Tune
    domains to search instead of the plan's (a grid, in tests and experiment scripts).
    `trainable_fn`: null runs what the config asks for (trial_function)."""
    from ray import tune
    from ray.tune.search import Searcher

    from medsweep.search.leaderboard import Leaderboard

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The classic output path: Tune then calls our ProgressReporter instead of its own boxes.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    config, sweep, space = plan.config, plan.config["sweep"], plan.space
    if trainable_fn is None:
        init_ray(config["cluster"])
        trainable_fn = trial_function(config)
    leaderboard = Leaderboard(plan.run_dir.root.resolve(), plan.metric, plan.mode, space.names)
    # Show "lora.r" rather than "model.lora.r".
    reporter = console(config, {name: name.split(".", 1)[-1] for name in space.names},
                       {**{o.metric: o.metric for o in plan.objectives}, "evaluation": "evals", "step": "step"})
    name, experiment = experiment, plan.run_dir.experiment(experiment)
    domains = space.ray(config) if param_space is None else param_space
    # A conditional space lives in the searcher (define-by-run); Tune must not get it as well.
    param_space = {} if space.conditional else domains
    if tune.Tuner.can_restore(experiment):
        # Same command, same run dir: pick the sweep up where it stopped. Finished trials are
        # kept; unfinished ones continue from their last checkpoint; Optuna's state is restored.
        print(f"[medsweep] resuming the sweep in {experiment}: {len(leaderboard.rows)} trial(s) already finished",
              flush=True)
        repaired = resume.reconcile(experiment, set(leaderboard.rows))
        if repaired:
            print(f"[medsweep] the killed driver's saved search state and trial list disagreed: {repaired}", flush=True)
        restored = tune.Tuner.restore(experiment, trainable=trainable_of(config, trainable_fn), param_space=param_space,
                                      resume_unfinished=True, resume_errored=False, restart_errored=False)
        return driver.fit(restored, sweep["num_trials"], "sweep")
    searcher = build_searcher(config, domains, name)
    _, note = sweep_points(config)
    if note:
        print(f"[medsweep] {note}", flush=True)
    if isinstance(searcher, Searcher):
        study.write_study_file(config, experiment)
        callbacks = [study.closer(config, experiment), *callbacks]
    stopper = time_budget(config, plan.num_train)
    if stopper is not None:
        from medsweep.search.budget import CheckpointsInFlight

        callbacks = [CheckpointsInFlight(config["run_dir"]), *callbacks]
    # With several objectives the searcher holds the metric lists and Tune must not set one metric on it.
    tuner = build_tuner(config, trainable_fn, param_space, name, reporter=reporter,
                        callbacks=[leaderboard, *callbacks], stop=stopper,
                        tune_config={"metric": None if plan.multi else plan.metric, "mode": None if plan.multi else plan.mode,
                                     "num_samples": sweep["num_trials"], "search_alg": searcher,
                                     "max_concurrent_trials": sweep["max_concurrent"] if isinstance(searcher, Searcher) else None,
                                     "scheduler": build_scheduler(config, plan.num_train)})
    return driver.fit(tuner, sweep["num_trials"], "sweep")


def time_budget(config: dict, num_train: int):
    """sweep.time_budget_s as a Tune stopper (budget.py), reset for a new sweep; None without one."""
    from medsweep.search import budget

    sweep, cluster = config["sweep"], config["cluster"]
    if sweep["time_budget_s"] is None:
        return None
    slots = int((cluster["num_cpus"] or os.cpu_count() or 1) // cluster["cpus_per_trial"]) if cluster["address"] is None else sweep["max_concurrent"]
    stopper = budget.SearchBudget(sweep["time_budget_s"], config["run_dir"], budget.reruns(config),
                                  concurrency=max(1, min(sweep["max_concurrent"], slots)),
                                  full_evaluations=max_evaluations(config, num_train))
    stopper.start()
    return stopper
