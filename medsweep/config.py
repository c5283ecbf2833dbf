"""The configuration schema: plain dataclasses, one per config group.

The CLI registers these with Hydra as structured configs, so a misspelled key or a wrongly typed
value fails at composition time. Everything downstream receives the resolved config as a plain dict
(`dataclasses.asdict`-shaped); nothing below the CLI imports Hydra or OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # A comma-separated list of module names, or "all-linear". A string (not a list) so that it can
    # be a categorical search dimension: Optuna only samples primitive values.
    target_modules: str = "query,value"


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


@dataclass
class DataConfig:
    name: str = "medical_abstracts"
    # null means the copy of the data set shipped inside the package.
    path: Optional[str] = None
    format: str = "csv"  # csv | jsonl
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    # A two-column CSV (label value, label name) that names integer-coded labels.
    label_names_path: Optional[str] = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # Debug / budget limits in the spirit of run_glue's max_train_samples (stratified subsample).
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


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
    # Batches of similar length waste fewer pad tokens under dynamic padding.
    group_by_length: bool = True
    # Stop after this many optimizer steps (null: train for `epochs`).
    max_steps: Optional[int] = None


@dataclass
class TrackerConfig:
    name: str = "none"  # none | wandb
    project: str = "medsweep"
    entity: Optional[str] = None
    # offline: runs are written locally and uploaded later with `wandb sync` (air-gapped clusters);
    # online needs credentials (`wandb login` or WANDB_API_KEY); disabled: no W&B at all.
    mode: str = "offline"
    # Patient text never leaves the machine unless this is set explicitly.
    log_examples: bool = False
    # Where W&B writes its run folders (null: the run dir, so a run dir holds everything to sync).
    dir: Optional[str] = None


@dataclass
class ClusterConfig:
    name: str = "local"
    # null: start an embedded Ray on this machine; "auto" or host:port: join a running cluster.
    address: Optional[str] = None
    # CPUs for the embedded Ray (null: all cores).
    num_cpus: Optional[int] = None
    cpus_per_trial: float = 2.0
    gpus_per_trial: float = 0.0
    # Where Ray keeps trial results and checkpoints (null: <run dir>/ray).
    storage_path: Optional[str] = None


@dataclass
class SweepConfig:
    name: str = "single"
    num_trials: int = 1
    max_concurrent: int = 1
    metric: str = "val_f1_macro"
    mode: str = "max"
    seed: int = 0
    searcher: str = "optuna"  # optuna | random
    scheduler: str = "asha"  # asha | none
    # ASHA: evaluations a trial always gets before it can be stopped.
    grace_period: int = 1
    reduction_factor: int = 2
    # Nested like the config itself; a leaf is {type: loguniform|uniform|int|choice, ...}.
    # e.g. {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 5e-4}}}
    search_space: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PromoteConfig:
    enabled: bool = True


@dataclass
class MedsweepConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    # Filled in by the CLI: where this run writes everything.
    run_dir: str = "."


class ConfigError(ValueError):
    """A user mistake in the configuration or the input data. The CLI prints it as one line."""


METRIC_MODES = ("max", "min")
FINETUNE_METHODS = ("full", "lora")
TRACKERS = ("none", "wandb")
TRACKER_MODES = ("offline", "online", "disabled")


def validate(config: dict) -> None:
    """Check what the schema's types cannot: ranges and choices. Raises ConfigError."""
    m, d, t, s, c, tr = (config[k] for k in ("model", "data", "trainer", "sweep", "cluster", "tracker"))
    checks = [
        (m["finetune"] in FINETUNE_METHODS, f"model.finetune must be one of {FINETUNE_METHODS}, got {m['finetune']!r}"),
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
        (0.0 < d["val_fraction"] < 1.0, f"data.val_fraction must be in (0, 1), got {d['val_fraction']}"),
        (0.0 < d["test_fraction"] < 1.0, f"data.test_fraction must be in (0, 1), got {d['test_fraction']}"),
        (d["val_fraction"] + d["test_fraction"] < 1.0, "data.val_fraction + data.test_fraction must be < 1"),
        (d["max_train_samples"] is None or d["max_train_samples"] >= 1, "data.max_train_samples must be >= 1 or null"),
        (d["max_eval_samples"] is None or d["max_eval_samples"] >= 1, "data.max_eval_samples must be >= 1 or null"),
        (s["num_trials"] >= 1, f"sweep.num_trials must be >= 1, got {s['num_trials']}"),
        (s["max_concurrent"] >= 1, f"sweep.max_concurrent must be >= 1, got {s['max_concurrent']}"),
        (s["mode"] in METRIC_MODES, f"sweep.mode must be one of {METRIC_MODES}, got {s['mode']!r}"),
        (s["searcher"] in ("optuna", "random"), f"sweep.searcher must be optuna or random, got {s['searcher']!r}"),
        (s["scheduler"] in ("asha", "none"), f"sweep.scheduler must be asha or none, got {s['scheduler']!r}"),
        (s["grace_period"] >= 1, "sweep.grace_period must be >= 1"),
        (s["reduction_factor"] >= 2, "sweep.reduction_factor must be >= 2"),
        (c["cpus_per_trial"] > 0, f"cluster.cpus_per_trial must be > 0, got {c['cpus_per_trial']}"),
        (c["gpus_per_trial"] >= 0, f"cluster.gpus_per_trial must be >= 0, got {c['gpus_per_trial']}"),
        (tr["name"] in TRACKERS, f"tracker.name must be one of {TRACKERS}, got {tr['name']!r}"),
        (tr["mode"] in TRACKER_MODES, f"tracker.mode must be one of {TRACKER_MODES}, got {tr['mode']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
