"""Build the model a trial trains: a base sequence classifier, optionally wrapped with LoRA; and
read the checkpoints trials write.

Where a model name points (builtin:, a folder, a Hub id) is medsweep.hf' job; the precision
it computes in, medsweep.training.precision's; the promoted folder, medsweep.release.layout's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from medsweep.config import ConfigError
from medsweep.hf import hub_offline_reason, resolve_model
from medsweep.training import precision


def check_available(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Fail in seconds, with a sentence, when a model cannot be had (not a model folder, offline,
    unknown id), before any trial starts."""
    resolved = resolve_model(name_or_path)
    if trust_remote_code:  # the user's own choice, said out loud: the model's Python will run in every trial
        print(f"[medsweep] model.trust_remote_code=true: {name_or_path}'s own Python code will run", flush=True)
    if Path(resolved).is_dir():
        if not (Path(resolved) / "config.json").exists():
            raise ConfigError(f"model folder {resolved} has no config.json: not a Hugging Face model folder")
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(resolved, "config.json", revision=revision), str):
        return
    reason = hub_offline_reason()
    if reason is not None:
        raise ConfigError(f"model {name_or_path!r} is not a local folder nor in the Hugging Face cache, and {reason}; "
                          f"download it on a connected machine and pass its folder as model.name_or_path")


def load_tokenizer(cfg: dict):
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(cfg["name_or_path"]), revision=cfg["revision"], trust_remote_code=cfg["trust_remote_code"]
    )
    return precision.ensure_pad_token(tokenizer)


def load_base(cfg: dict, label_names: list[str], dtype: torch.dtype | None = None):
    """The base classifier with a fresh head for `label_names`, in `dtype` (default: model.dtype),
    4-bit if `model.quantization=4bit`."""
    precision.check_precision(cfg)
    dtype = dtype or precision.resolve_dtype(cfg.get("dtype", "auto"))
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(cfg["name_or_path"]),
        revision=cfg["revision"],
        trust_remote_code=cfg["trust_remote_code"],
        use_safetensors=True,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        # The checkpoint's own head (if any) has another shape: replace it rather than fail.
        ignore_mismatched_sizes=True,
        dtype=dtype,
        **precision.loading_kwargs(cfg, dtype),
    )
    # Decoders pool the last token that is not padding: the model must know the id the collator pads with.
    model.config.pad_token_id = load_tokenizer(cfg).pad_token_id
    model.config.use_cache = False  # a classifier never generates; a KV cache only costs memory
    return model


def build_model(cfg: dict, label_names: list[str]):
    """The model a trial trains: the base (full fine-tune) or the base wrapped with LoRA.

    What the optimizer updates is float32 whatever `model.dtype` is (mixed precision): a full
    fine-tune loads every weight in float32, LoRA keeps the frozen base in `model.dtype` or 4-bit.
    """
    if cfg["finetune"] == "full":
        return load_base(cfg, label_names, dtype=torch.float32)
    model = load_base(cfg, label_names)
    if cfg.get("quantization", "none") != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    model = wrap_lora(model, cfg["lora"])
    precision.upcast_trainable(model)
    return model


def wrap_lora(model, lora: dict):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora["target_modules"]
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    peft_config = LoraConfig(
        # SEQ_CLS makes PEFT keep the classifier head trainable and save it with the adapter; the
        # pooler in front of it is head too (config.LoraSettings.train_pooler says why).
        task_type=TaskType.SEQ_CLS,
        modules_to_save=pooler_modules(model) if lora.get("train_pooler", True) else None,
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=target_modules,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"model.lora.target_modules={targets!r} does not fit this model: {str(exc).splitlines()[0]}") from None


def pooler_modules(model) -> list[str] | None:
    """["pooler"] when the classifier reads its input through a pooler module (BERT, ALBERT, DeBERTa),
    else None: decoders and RoBERTa-style heads have none, their whole head is `classifier`/`score`."""
    return ["pooler"] if any(name.rsplit(".", 1)[-1] == "pooler" for name, _ in model.named_modules()) else None


def check_lora_targets(model_cfg: dict, search_space: dict) -> None:
    """Every target_modules value a trial can get must name modules of this model (BERT's
    "query,value" do not exist in a Llama). Checked on an empty meta-device copy built from
    config.json alone, so a mismatch fails in a second, before Ray starts."""
    if model_cfg["finetune"] != "lora":
        return
    spec = search_space.get("model", {}).get("lora", {}).get("target_modules", {})
    values = {model_cfg["lora"]["target_modules"], *(spec.get("values", []) if spec.get("type") == "choice" else [])}
    lists = sorted(v for v in values if isinstance(v, str) and v != "all-linear")
    if not lists:
        return
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(resolve_model(model_cfg["name_or_path"]), revision=model_cfg["revision"],
                                               trust_remote_code=model_cfg["trust_remote_code"])
        with init_empty_weights():
            empty = AutoModelForSequenceClassification.from_config(hf_config, trust_remote_code=model_cfg["trust_remote_code"])
    except (ValueError, OSError) as exc:
        raise ConfigError(f"model {model_cfg['name_or_path']!r} cannot be built as a sequence classifier: "
                          f"{str(exc).splitlines()[0]}") from None
    names = [name for name, _ in empty.named_modules()]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in empty.named_modules() if isinstance(m, torch.nn.Linear)})
    for value in lists:
        # PEFT matches a target against the end of a module's dotted name.
        missing = [t for t in (t.strip() for t in value.split(",")) if t and not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(f"model.lora.target_modules={value!r}: {hf_config.model_type} has no module named "
                              f"{', '.join(missing)}; its linear layers are {', '.join(linear)} (or use all-linear)")


def count_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


# --- checkpoints ---------------------------------------------------------------------------------
# A checkpoint is the folder the HF Trainer writes at each evaluation (model weights, or the LoRA
# adapter with its classifier head; tokenizer; optimizer/scheduler/RNG state for resuming) plus
# trial.json with the trial's config and that evaluation's metrics.

TRIAL_FILE = "trial.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# trial.json's fields and their types: a checkpoint (resumed, or promoted) is read as data.
TRIAL_FIELDS = {"metrics": dict, "config": dict, "label_names": list, "data_fingerprints": dict}


def read_checkpoint_info(directory: Path) -> dict:
    """trial.json, fields type-checked, and the checkpoint's weights checked against the sha256
    recorded when it was saved: a truncated or corrupted checkpoint is a one-line ConfigError."""
    from medsweep.hf import DIGEST_FIELD, check_weight_digests, read_json_mapping

    path = Path(directory) / TRIAL_FILE
    if not path.exists():
        raise ConfigError(f"{directory} is not a medsweep checkpoint (no {TRIAL_FILE})")
    info = read_json_mapping(path)
    for key, kind in TRIAL_FIELDS.items():
        if not isinstance(info.get(key), kind):
            raise ConfigError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(n, str) for n in info["label_names"]) or not isinstance(info["config"].get("model"), dict):
        raise ConfigError(f"{path}: malformed label_names or config")
    recorded = info.get(DIGEST_FIELD)
    if recorded is not None:  # checkpoints written before the digests were recorded have none
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ConfigError(f"{path}: field {DIGEST_FIELD!r} must map file names to sha256 digests")
        check_weight_digests(directory, recorded)
    return info


def is_adapter_checkpoint(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).exists()


def load_checkpoint(directory: Path, merge: bool = True, trust_remote_code: bool = False):
    """The model in a checkpoint; a LoRA adapter is put back on its base (and merged if asked,
    unless the base is 4-bit: merging would re-quantize the adapter's update to 4 bits).
    `trust_remote_code` is the caller's (the user's config), never trial.json's."""
    from medsweep.hf import check_model_folder

    directory = Path(directory)
    check_model_folder(directory, weights=True, trust_remote_code=trust_remote_code)
    if not is_adapter_checkpoint(directory):
        return AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True,
                                                                  trust_remote_code=trust_remote_code)
    info = read_checkpoint_info(directory)
    model_cfg = {**info["config"]["model"], "trust_remote_code": trust_remote_code}
    model = load_adapter(model_cfg, info["label_names"], directory)
    return model.merge_and_unload() if merge and not is_quantized(model_cfg) else model


def load_adapter(model_cfg: dict, label_names: list[str], adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(model_cfg, label_names), adapter_dir)


def is_quantized(model_cfg: dict) -> bool:
    return model_cfg.get("quantization", "none") != "none"
