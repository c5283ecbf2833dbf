"""The configuration schema: plain dataclasses, one per config group.

The CLI registers these with Hydra as structured configs, so a misspelled key or a wrongly typed
value fails at composition time. Everything downstream receives the resolved config as a plain dict
(`dataclasses.asdict`-shaped); nothing below the CLI imports Hydra or OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # A comma-separated list of module names, or "all-linear". A string (not a list) so that it can
    # be a categorical search dimension: Optuna only samples primitive values.
    target_modules: str = "query,value"
    # Train the pooler in full beside the adapter, as a full fine-tune does. In BERT-style classifiers
    # the head reads [CLS] through the pooler (a dense layer plus tanh); PEFT keeps only `classifier`
    # trainable, so with the pooler frozen the new head sat on a fixed projection (all-MiniLM-L6-v2 was
    # trained through mean pooling, never through its pooler: weights of std 0.009) and LoRA needed
    # learning rates near divergence (docs/benchmarks.md, "LoRA's frozen pooler").
    train_pooler: bool = True


@dataclass
class ModelConfig:
    name: str = "minilm"
    # A local folder, a Hugging Face Hub id, or a built-in model ("builtin:minilm-l6",
    # "builtin:tiny-random-bert").
    name_or_path: str = "builtin:minilm-l6"
    finetune: str = "full"  # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    revision: Optional[str] = None
    # Remote code runs arbitrary Python from the Hub on machines that hold patient data: opt-in only.
    trust_remote_code: bool = False
    # Precision the model computes in (and frozen weights are stored in); trainable weights stay
    # float32. auto: bfloat16 on a CUDA GPU that supports it, else float32.
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    # 4bit: QLoRA, a LoRA adapter on a frozen bitsandbytes NF4 base (CUDA only).
    quantization: str = "none"  # none | 4bit
    # The attention kernel (transformers' attn_implementation): null leaves transformers' choice (SDPA
    # for BERT, Llama, Qwen); eager / sdpa / flash_attention_2 to measure one against another on a GPU.
    attn_implementation: Optional[str] = None


@dataclass
class DataConfig:
    name: str = "medical_abstracts"
    # A file, "builtin:NAME" for a data set shipped inside the package, or (format hf) a Hub dataset
    # id or a local dataset folder. Set either this or train_path.
    path: Optional[str] = None
    format: str = "csv"  # csv | jsonl | parquet | hf
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    # A two-column CSV (label value, label name) that names integer-coded labels.
    label_names_path: Optional[str] = None
    # Splits fixed in advance (an official test set): a column whose values are train / validation /
    # test, or one file per split. A split that is not given is carved out of the training rows.
    split_column: Optional[str] = None
    train_path: Optional[str] = None
    validation_path: Optional[str] = None
    test_path: Optional[str] = None
    # format hf: the dataset's configuration (subset) name, as in datasets.load_dataset(path, name).
    hf_subset: Optional[str] = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # Debug / budget limits in the spirit of run_glue's max_train_samples (stratified subsample).
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # Rows that fit the promoted model's temperature, decision rule and conformal threshold
    # (promotion/calibration.py). null (the default): the validation split, which also chose the
    # model. A share in (0, 0.5]: that share of the training rows, stratified and seeded, is carved
    # into a calibration split that no trial trains on and nothing chooses with (the coverage
    # guarantee then needs no assumption about the model choice; the model trains on fewer rows).
    # Why null: on Medical Abstracts, PubMedQA and an imbalanced subsample (docs/benchmarks.md,
    # "Calibrated promotion") test coverage was inside its binomial CI in 38/45 fits at 0.90 and 44/45
    # at 0.95 on the validation split, vs 36/45 and 23/45 on a 0.2 carve (a smaller split, a noisier
    # quantile), at no cost in training rows. Set 0.2 for a sweep of many trials on a small
    # validation split, where the model choice fits the validation rows harder.
    calibration_fraction: Optional[float] = None
    # Columns describing who a row is about (sex, age band, site): carried beside the splits for the
    # subgroup audit of the promoted model, never given to the model as input.
    group_columns: List[str] = field(default_factory=list)
    # Mask names, dates, phone numbers, e-mails, record numbers, addresses, URLs and SSNs in the
    # texts as they are read (medsweep/data/deid.py), before anything is logged, trained or written.
    deidentify: bool = False
    # Tokenized splits are kept under <run dir>/cache/tokens, keyed by the tokenizer, max_length, the
    # columns and the rows themselves, and shared by every trial and seed re-run (medsweep/data/cache.py).
    cache: bool = True
    # Clinicians' feedback (the service's feedback.sqlite, or its CSV export) added to the TRAINING split
    # only, deduplicated against every split (medsweep/data/feedback_rows.py): validation and test stay
    # the rows the earlier model was chosen and scored on, so promote.gate can compare the two fairly.
    feedback: Optional[str] = None


@dataclass
class TrainerConfig:
    learning_rate: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    seed: int = 42
    weight_decay: float = 0.01
    # Fraction of the training steps used for linear warm-up (transformers 5 takes a float
    # warmup_steps < 1 as a ratio).
    warmup_ratio: float = 0.1
    gradient_accumulation_steps: int = 1
    # 0: evaluate once per epoch; N > 0: every N optimizer steps.
    eval_every_steps: int = 0
    # N > 0: N evaluations spread evenly over each trial's own steps (overrides eval_every_steps), so
    # that ASHA's rungs (counted in evaluations) fall at the same fractions of every trial's budget.
    evaluations: Optional[int] = None
    # Batches of similar length waste fewer pad tokens under dynamic padding.
    group_by_length: bool = True
    # Stop after this many optimizer steps (null: train for `epochs`).
    max_steps: Optional[int] = None
    # Class imbalance: "balanced" weights the training loss by inverse class frequency; oversample
    # repeats minority-class rows of the training split (never validation or test).
    class_weighting: str = "none"  # none | balanced
    oversample: bool = False
    # Token-level augmentation of the training split only (medsweep/training/augment.py), seeded by
    # trainer.seed: synonym replacement from a small built-in list, random swaps, random deletions.
    augment: str = "none"  # none | synonym | swap | delete
    augment_rate: float = 0.1
    # torch.compile the model (TrainingArguments.torch_compile). Off: compiling costs tens of seconds
    # per trial and recompiles for new lengths under dynamic padding; a GPU measurement decides
    # (experiments/gpu_all.py).
    torch_compile: bool = False


@dataclass
class TrackerConfig:
    name: str = "none"  # none | wandb | mlflow
    project: str = "medsweep"
    entity: Optional[str] = None
    # offline: runs are written locally and uploaded later with `wandb sync` (air-gapped clusters);
    # online needs credentials (`wandb login` or WANDB_API_KEY); disabled: no W&B at all.
    mode: str = "offline"
    # Patient text never leaves the machine unless this is set explicitly.
    log_examples: bool = False
    # Where W&B writes its run folders (null: the run dir, so a run dir holds everything to sync).
    dir: Optional[str] = None
    # tracker=mlflow: an MLflow server or database URI (null: sqlite:///<tracker.dir or run dir>/mlflow/mlflow.db,
    # no server). `project` names the MLflow experiment.
    tracking_uri: Optional[str] = None


@dataclass
class SimulateConfig:
    # A cluster in a box (medsweep/simulation/cluster.py): nodes > 0 starts that many Ray nodes on this
    # machine, each declaring GPUs and CPUs it does not have, and trials replay recorded learning curves
    # (replay.source) instead of training. 0: no simulation (a real embedded Ray or cluster.address).
    nodes: int = 0
    gpus_per_node: float = 8.0
    cpus_per_node: float = 16.0
    # Each simulated node has its own object store; trials pass nothing big through it (Ray's minimum is 75 MB).
    object_store_mb: int = 80


@dataclass
class ClusterConfig:
    name: str = "local"
    # null: start an embedded Ray on this machine; "auto" or host:port: join a running cluster.
    address: Optional[str] = None
    # CPUs for the embedded Ray (null: all cores).
    num_cpus: Optional[int] = None
    cpus_per_trial: float = 2.0
    # A number (0.25: four trials share a GPU), or "auto": a short probe at the search space's largest
    # batch x max_length measures peak GPU memory and picks the share (medsweep/search/resources.py).
    # Any, not float, so that the string "auto" composes (OmegaConf 2.3 has no Union); validate() checks it.
    gpus_per_trial: Any = 0.0
    # Where Ray keeps trial results and checkpoints (null: <run dir>/ray).
    storage_path: Optional[str] = None
    # Run the next trial in the worker process the last one left (same resources), instead of a fresh
    # process that imports torch and transformers again (8 s saved per trial on 2 cores:
    # experiments/bench_reuse.py).
    reuse_actors: bool = True
    # Ray saves its whole experiment state (~20 KB a trial) after every trial checkpoint when a trial
    # keeps one (num_to_keep): half the driver's time from a few hundred short trials on. true lets Ray
    # save on its own clock (every 10 s or more; search/checkpoints.py then deletes a finished trial's
    # other checkpoints): 1,000 replayed trials ran 2.7x faster (docs/benchmarks.md). The price, after
    # a kill -9 only: trials that started and ended since Ray's last save are not in its saved state,
    # so the resume neither re-runs them nor hears of them again, and the rows, tracker runs and
    # result.json written in their last second can be missing (docs/cluster.md). Off by default.
    periodic_saves: bool = False
    simulate: SimulateConfig = field(default_factory=SimulateConfig)


@dataclass
class SweepConfig:
    name: str = "single"
    num_trials: int = 1
    max_concurrent: int = 1
    metric: str = "val_f1_macro"
    mode: str = "max"
    # Multi-objective (optional): e.g. metrics [val_f1_macro, val_ece], modes [max, min]. When set,
    # metrics[0]/modes[0] are the primary objective (ASHA, checkpoints, leaderboard) instead of metric/mode
    # (medsweep/plan.py reads them; the config is never rewritten) and Optuna optimises all of them; see medsweep/promotion/ranking.py and selection.py for how one model is promoted.
    metrics: List[str] = field(default_factory=list)
    modes: List[str] = field(default_factory=list)
    seed: int = 0
    searcher: str = "optuna"  # optuna | random
    # Random trials before TPE starts modelling the results. null: a third of num_trials, 2 to 10.
    # Optuna's own default (10) would leave every sweep of up to 10 trials a purely random search
    # (experiments/bench_tpe_startup.py: the best trial lands closer to the optimum from ~12 trials on).
    startup_trials: Optional[int] = None
    # TPE with trials still running: true counts each running trial as a bad result at its point, so
    # parallel proposals spread out instead of piling onto one (Optuna's advice for parallel workers).
    # Off by default: on a simulated clock it moved no figure at 8 or 32 slots, on LCBench or medsweep's
    # own curves (experiments/bench_search_scale.py --variants; docs/cluster.md).
    constant_liar: bool = False
    # asha | hyperband (Ray's synchronous HyperBand brackets) | median (median stopping rule) |
    # fifo (no early stopping; "none" is the same). Which one wins: experiments/bench_search.py.
    scheduler: str = "asha"
    # ASHA / median: evaluations a trial always gets before it can be stopped. null: a third of a
    # trial's evaluations, rounded up (ceil(max_t / 3): 2 of 4, 2 of 6, 3 of 8, 1 of 3). Measured on a
    # simulated clock against 1 (the default before 2026-12-07), 2, 3, 4 and no stopping: best mean rank at
    # 8 and 32 slots on 4 LCBench tasks and on medsweep's own curves, where a first rung at 1 of 4
    # stopped the base configuration of a full fine-tune (docs/cluster.md, "Search settings by cluster size").
    grace_period: Optional[int] = None
    reduction_factor: int = 2
    # ASHA's brackets (asynchronous HyperBand): 1 is plain ASHA; n > 1 spreads trials over n brackets
    # whose first rungs come later (grace_period x reduction_factor^k), hedging against early rankings.
    brackets: int = 1
    # Retries of a failed trial, each from its last checkpoint (0: a failed trial stays failed).
    max_failures: int = 0
    # Nested like the config itself; a leaf is {type: loguniform|uniform|int|choice, ...}.
    # e.g. {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 5e-4}}}
    search_space: Dict[str, Any] = field(default_factory=dict)
    # Configurations tried first, before the searcher proposes its own (nested like search_space,
    # every dimension set): a known-good setting, a published baseline.
    points_to_evaluate: List[Dict[str, Any]] = field(default_factory=list)
    # Try the base configuration (each dimension at its value in the sweep file + trainer defaults) as the
    # first trial after points_to_evaluate, so a sweep can always promote what a plain run would train.
    try_base: bool = True
    # After the sweep, when the best trials sit at the edge of a numeric range, run one more round of
    # num_trials with those ranges moved (centred on the best value; medsweep/search/edges.py).
    extend_edges: bool = False
    # The Optuna study (medsweep/search/study.py): null stores it in Optuna's journal file
    # <run dir>/optuna.journal; an RDB URL (sqlite:///..., postgresql://..., mysql://...) shares it
    # among drivers and a dashboard. study_name null: sweep.name.
    storage: Optional[str] = None
    study_name: Optional[str] = None
    # Earlier run dirs whose trials TPE is given before the first new trial (same splits, objective
    # and search dimensions, or the run is refused).
    warm_start: List[str] = field(default_factory=list)
    # Wall-time budget of the run in seconds (search + seed re-runs + promotion; null: none),
    # counted across a kill and resume (medsweep/search/budget.py).
    time_budget_s: Optional[float] = None


@dataclass
class PromoteConfig:
    enabled: bool = True
    # Seed-robust promotion: the top_k configurations of the sweep are re-trained with each of these
    # extra trainer.seed values, and the configuration with the best mean is promoted.
    # top_k=1 and seeds=[] switch it off (the seed of the sweep's own run is still recorded); a
    # single run (sweep.num_trials=1) is never re-run.
    top_k: int = 3
    seeds: List[int] = field(default_factory=lambda: [1, 2])
    # Test-set confidence intervals: percentile bootstrap, seeded.
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    # Search cheap, promote on everything: when the sweep trained on a subset (data.max_train_samples),
    # the top_k configurations are re-trained on all training rows (with trainer.seed and each extra
    # seed; same epochs, so more steps) and promoted from those runs. false: promote the search runs.
    refit: bool = True
    # Probabilities a clinician can act on (promotion/calibration.py): one temperature fitted on the
    # validation split and baked into the promoted weights (merged layout), and split-conformal (LAC)
    # prediction sets that hold the true label with probability `coverage` on exchangeable data.
    calibrate: bool = True
    coverage: float = 0.9
    # The decision rule (promotion/decision.py): per-class offsets that raise macro-F1 are applied only
    # when they beat argmax beyond their noise on held-out rows. Two-class screening: a sensitivity the
    # positive class must keep on the validation rows (e.g. 0.95), whatever specificity it costs.
    target_sensitivity: Optional[float] = None
    # A retrain must prove itself: an earlier run dir whose promoted model the new one is compared with
    # (paired bootstrap on the same test split, the sweep's primary metric; promotion/gate.py) before it
    # is promoted. Significantly worse: nothing is promoted, the earlier model keeps serving.
    gate: Optional[str] = None


@dataclass
class ReplayConfig:
    # Trials that replay a learning curve instead of training (medsweep/simulation/): the driver,
    # searcher, scheduler, leaderboard, trackers and report are the real ones. null: real training;
    # lcbench: YAHPO Gym's LCBench surrogate (the `simulate` extra), at replay.task. table: medsweep's own
    # recorded curves (experiments/record_curves.py; nearest recorded neighbours, simulation/table.py).
    source: Optional[str] = None
    # replay.source=table: the curve table; null: the one shipped (MiniLM on Medical Abstracts, 2 CPU cores).
    table: Optional[str] = None
    task: str = "3945"
    # The folder that holds lcbench/ (YAHPO Gym's surrogate data).
    data_path: Optional[str] = None
    # Simulated seconds per recorded second: 0.01 replays a 100 s curve in 1 s.
    time_scale: float = 0.01
    # null: each evaluation sleeps its recorded seconds x time_scale. A number: every evaluation sleeps
    # that long (trials of equal length, for packing and throughput measurements).
    evaluation_s: Optional[float] = None
    # lcbench: which config key drives each of the surrogate's hyperparameters; the others stay at its
    # defaults. (A table's parameters are medsweep's own keys: simulation/table.py KEYS.)
    # A value outside the surrogate's range is clipped to it.
    parameters: Dict[str, str] = field(default_factory=lambda: {
        "learning_rate": "trainer.learning_rate", "batch_size": "trainer.batch_size",
        "weight_decay": "trainer.weight_decay", "max_dropout": "model.lora.dropout", "max_units": "model.lora.r"})


@dataclass
class MedsweepConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    # Filled in by the CLI: where this run writes everything.
    run_dir: str = "."


class ConfigError(ValueError):
    """A user mistake in the configuration or the input data. The CLI prints it as one line."""


METRIC_MODES = ("max", "min")
REPLAY_SOURCES = (None, "lcbench", "table")
FINETUNE_METHODS = ("full", "lora")
DATA_FORMATS = ("csv", "jsonl", "parquet", "hf")
CLASS_WEIGHTINGS = ("none", "balanced")
AUGMENTATIONS = ("none", "synonym", "swap", "delete")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit")
ATTENTIONS = (None, "eager", "sdpa", "flash_attention_2")
TRACKERS = ("none", "wandb", "mlflow")
TRACKER_MODES = ("offline", "online", "disabled")
SCHEDULERS = ("asha", "hyperband", "median", "fifo", "none")


def gpu_share_ok(value) -> bool:
    """cluster.gpus_per_trial: "auto" or a number >= 0 (not a bool, which YAML would also accept as a number)."""
    if value == "auto":
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def validate(config: dict) -> None:
    """Check what the schema's types cannot: ranges and choices. Raises ConfigError."""
    m, d, t, s, c, p, tr = (config[k] for k in ("model", "data", "trainer", "sweep", "cluster", "promote", "tracker"))
    checks = [
        (m["finetune"] in FINETUNE_METHODS, f"model.finetune must be one of {FINETUNE_METHODS}, got {m['finetune']!r}"),
        (m["dtype"] in DTYPES, f"model.dtype must be one of {DTYPES}, got {m['dtype']!r}"),
        (m["attn_implementation"] in ATTENTIONS, f"model.attn_implementation must be null or one of {ATTENTIONS[1:]}, got {m['attn_implementation']!r}"),
        (m["quantization"] in QUANTIZATIONS, f"model.quantization must be one of {QUANTIZATIONS}, got {m['quantization']!r}"),
        (m["quantization"] == "none" or m["finetune"] == "lora",
         "model.quantization=4bit trains a LoRA adapter on a frozen 4-bit base: set model.finetune=lora"),
        (m["lora"]["r"] >= 1, f"model.lora.r must be >= 1, got {m['lora']['r']}"),
        (0.0 <= m["lora"]["dropout"] < 1.0, f"model.lora.dropout must be in [0, 1), got {m['lora']['dropout']}"),
        (t["learning_rate"] > 0, f"trainer.learning_rate must be > 0, got {t['learning_rate']}"),
        (t["max_length"] >= 1, f"trainer.max_length must be >= 1, got {t['max_length']}"),
        (t["epochs"] > 0, f"trainer.epochs must be > 0, got {t['epochs']}"),
        (t["batch_size"] >= 1, f"trainer.batch_size must be >= 1, got {t['batch_size']}"),
        (t["eval_batch_size"] >= 1, f"trainer.eval_batch_size must be >= 1, got {t['eval_batch_size']}"),
        (0.0 <= t["warmup_ratio"] < 1.0, f"trainer.warmup_ratio must be in [0, 1), got {t['warmup_ratio']}"),
        (t["gradient_accumulation_steps"] >= 1, "trainer.gradient_accumulation_steps must be >= 1"),
        (t["eval_every_steps"] >= 0, "trainer.eval_every_steps must be >= 0 (0 = every epoch)"),
        (t["max_steps"] is None or t["max_steps"] >= 1, "trainer.max_steps must be >= 1 or null"),
        (t["class_weighting"] in CLASS_WEIGHTINGS,
         f"trainer.class_weighting must be one of {CLASS_WEIGHTINGS}, got {t['class_weighting']!r}"),
        (t["augment"] in AUGMENTATIONS, f"trainer.augment must be one of {AUGMENTATIONS}, got {t['augment']!r}"),
        (0.0 < t["augment_rate"] <= 0.5, f"trainer.augment_rate must be in (0, 0.5], got {t['augment_rate']}"),
        (len(set(d["group_columns"])) == len(d["group_columns"]), f"data.group_columns must not repeat a column, got {list(d['group_columns'])}"),
        (not set(d["group_columns"]) & {d["text_column"], d["label_column"], d["text_pair_column"]},
         "data.group_columns must not contain the text or label column: a group column is never a model input or target"),
        (d["format"] in DATA_FORMATS, f"data.format must be one of {DATA_FORMATS}, got {d['format']!r}"),
        (0.0 < d["val_fraction"] < 1.0, f"data.val_fraction must be in (0, 1), got {d['val_fraction']}"),
        (0.0 < d["test_fraction"] < 1.0, f"data.test_fraction must be in (0, 1), got {d['test_fraction']}"),
        (d["val_fraction"] + d["test_fraction"] < 1.0, "data.val_fraction + data.test_fraction must be < 1"),
        (d["max_train_samples"] is None or d["max_train_samples"] >= 1, "data.max_train_samples must be >= 1 or null"),
        (d["max_eval_samples"] is None or d["max_eval_samples"] >= 1, "data.max_eval_samples must be >= 1 or null"),
        (d.get("calibration_fraction") is None or 0.0 < d["calibration_fraction"] <= 0.5,
         f"data.calibration_fraction must be in (0, 0.5] or null (the validation split), got {d.get('calibration_fraction')}"),
        (s["num_trials"] >= 1, f"sweep.num_trials must be >= 1, got {s['num_trials']}"),
        (s["max_concurrent"] >= 1, f"sweep.max_concurrent must be >= 1, got {s['max_concurrent']}"),
        (s["mode"] in METRIC_MODES, f"sweep.mode must be one of {METRIC_MODES}, got {s['mode']!r}"),
        (s["startup_trials"] is None or s["startup_trials"] >= 1, f"sweep.startup_trials must be >= 1 or null, got {s['startup_trials']}"),
        (s["searcher"] in ("optuna", "random"), f"sweep.searcher must be optuna or random, got {s['searcher']!r}"),
        (s["scheduler"] in SCHEDULERS, f"sweep.scheduler must be one of {SCHEDULERS}, got {s['scheduler']!r}"),
        (t["evaluations"] is None or t["evaluations"] >= 1, f"trainer.evaluations must be >= 1 or null, got {t['evaluations']}"),
        (s["grace_period"] is None or s["grace_period"] >= 1, f"sweep.grace_period must be >= 1 or null, got {s['grace_period']}"),
        (s["time_budget_s"] is None or s["time_budget_s"] > 0, f"sweep.time_budget_s must be > 0 or null, got {s['time_budget_s']}"),
        (s["reduction_factor"] >= 2, "sweep.reduction_factor must be >= 2"),
        (s["brackets"] >= 1, f"sweep.brackets must be >= 1, got {s['brackets']}"),
        (s["max_failures"] >= -1, "sweep.max_failures must be >= 0 (or -1: retry forever)"),
        (len(s["metrics"]) == len(s["modes"]), f"sweep.metrics and sweep.modes must have the same length, got {len(s['metrics'])} and {len(s['modes'])}"),
        (all(mode in METRIC_MODES for mode in s["modes"]), f"sweep.modes must each be one of {METRIC_MODES}, got {s['modes']}"),
        (len(set(s["metrics"])) == len(s["metrics"]), f"sweep.metrics must not repeat a metric, got {s['metrics']}"),
        (p["top_k"] >= 1, f"promote.top_k must be >= 1, got {p['top_k']}"),
        (len(set(p["seeds"])) == len(p["seeds"]), f"promote.seeds must not repeat a seed, got {p['seeds']}"),
        (t["seed"] not in p["seeds"], f"promote.seeds are extra seeds: they must not contain trainer.seed ({t['seed']}), which the sweep already ran"),
        (p["target_sensitivity"] is None or 0.0 < p["target_sensitivity"] < 1.0,
         f"promote.target_sensitivity must be in (0, 1) or null, got {p['target_sensitivity']}"),
        (p["bootstrap_resamples"] >= 100, f"promote.bootstrap_resamples must be >= 100, got {p['bootstrap_resamples']}"),
        (0.5 <= p["coverage"] < 1.0, f"promote.coverage must be in [0.5, 1), got {p['coverage']}"),
        (c["cpus_per_trial"] > 0, f"cluster.cpus_per_trial must be > 0, got {c['cpus_per_trial']}"),
        (gpu_share_ok(c["gpus_per_trial"]), f"cluster.gpus_per_trial must be a number >= 0 or auto, got {c['gpus_per_trial']!r}"),
        (c["simulate"]["nodes"] >= 0, f"cluster.simulate.nodes must be >= 0, got {c['simulate']['nodes']}"),
        (c["simulate"]["nodes"] == 0 or c["address"] is None,
         "cluster.simulate.nodes starts its own Ray cluster: leave cluster.address null"),
        (c["simulate"]["nodes"] == 0 or config["replay"]["source"] is not None,
         "a simulated cluster declares GPUs it does not have: its trials must replay curves (set replay.source=lcbench or table)"),
        (config["replay"]["source"] in REPLAY_SOURCES, f"replay.source must be null or one of {REPLAY_SOURCES[1:]}, got {config['replay']['source']!r}"),
        (config["replay"]["source"] is None or not p["enabled"],
         "replayed trials train no model to promote: set promote.enabled=false"),
        (config["replay"]["evaluation_s"] is None or config["replay"]["evaluation_s"] >= 0,
         f"replay.evaluation_s must be >= 0 or null, got {config['replay']['evaluation_s']}"),
        (config["replay"]["time_scale"] >= 0, f"replay.time_scale must be >= 0, got {config['replay']['time_scale']}"),
        (tr["name"] in TRACKERS, f"tracker.name must be one of {TRACKERS}, got {tr['name']!r}"),
        (tr["mode"] in TRACKER_MODES, f"tracker.mode must be one of {TRACKER_MODES}, got {tr['mode']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
