"""The promoted folder: the one module that writes it and the one module that reads it.

Two layouts of the model itself:

- merged: a plain `save_pretrained` folder (config.json, safetensors weights with any LoRA update
  merged in, the tokenizer), which `transformers.pipeline` loads like any model; a LoRA model also
  keeps its adapter under adapter/ for PEFT users.
- adapter: for a 4-bit (QLoRA) base, where merging would re-quantize the adapter's update to 4 bits:
  the tokenizer, adapter/ (the LoRA weights and the classifier head) and base_model.json, which
  names the base (`name_or_path`, `revision`), how to quantize it and the label names. No config.json.

Beside the model every promoted folder holds metrics.json (the promotion's report), the resolved
config it was trained with (medsweep_config.yaml: text columns, max length), the model card
(README.md), the test split's labels and probabilities (test_predictions.npz, numbers only) and the
checkpoint's trial.json. Versions, the `promoted` link and the history around these folders are
release/store.py's.

Reading treats everything a folder carries as data: a path (or the run dir's `promoted` link) is
resolved once, every file is read from that one version folder, each field read passes a type
check, remote code is never enabled by a file, and weights load from safetensors only.

Imports transformers and PEFT lazily and nothing of medsweep.training: serving loads through here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from medsweep.config import ConfigError

MODEL_CONFIG = "config.json"
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
BASE_MODEL_FILE = "base_model.json"
SETTINGS_FILE = "medsweep_config.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.npz"
# Per test row, saved beside the predictions for the service's drift reference (monitoring.input_profile).
INPUT_ARRAYS = ("input_chars", "input_tokens", "input_unknown")
CARD_FILE = "README.md"
DECISION_FILE = "decision.json"  # how probabilities become decisions: the conformal threshold (optional)
TRIAL_FILE = "trial.json"  # the checkpoint's record (training/model.py writes it), copied as it is
MERGED, ADAPTER = "merged", "adapter"
# The precisions a base reference may name (config.DTYPES without "auto": a written reference is resolved).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# The bitsandbytes settings a base reference may carry, and their types.
BITSANDBYTES_FIELDS = {"load_in_4bit": bool, "bnb_4bit_quant_type": str, "bnb_4bit_use_double_quant": bool,
                       "bnb_4bit_compute_dtype": str}


# --- writing --------------------------------------------------------------------------------------

def write_model(folder: Path, model, tokenizer, *, adapter_source: Optional[Path] = None,
                base_reference: Optional[dict] = None, trial_file_from: Optional[Path] = None,
                adapter_model=None) -> str:
    """Write the model part of a promoted folder; returns the layout written.

    `model` is the merged model (merged layout) or None (adapter layout); `adapter_source` is a
    folder holding a PEFT adapter (a LoRA checkpoint), copied to adapter/; `base_reference`
    (name_or_path, revision, quantization, bitsandbytes, dtype, label_names) selects the adapter
    layout for a base that stays quantized; `trial_file_from` is the checkpoint whose trial.json
    goes beside the model. `adapter_model` (adapter layout): a PeftModel whose adapter is written to
    adapter/ instead of copying `adapter_source`'s files: promotion baked a temperature into its
    classifier head (modules_to_save), so base + adapter loads calibrated.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    if base_reference is not None:
        if adapter_source is None:
            raise ValueError("the adapter layout needs the adapter")
        check_base_reference(base_reference, BASE_MODEL_FILE)
        (folder / BASE_MODEL_FILE).write_text(json.dumps(base_reference, indent=2))
    else:
        model.save_pretrained(folder)  # safetensors: transformers' default
    if adapter_model is not None:
        if base_reference is None:
            raise ValueError("adapter_model is for the adapter layout")
        adapter_model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
        check_adapter(folder / ADAPTER_DIR)
    elif adapter_source is not None:
        (folder / ADAPTER_DIR).mkdir()
        for name in ADAPTER_FILES:
            shutil.copy2(Path(adapter_source) / name, folder / ADAPTER_DIR / name)
    if trial_file_from is not None:
        shutil.copy2(Path(trial_file_from) / TRIAL_FILE, folder / TRIAL_FILE)
    return ADAPTER if base_reference is not None else MERGED


def write_record(folder: Path, report: dict, config: dict, labels, probs, label_names: list[str],
                 inputs: dict | None = None) -> None:
    """What promotion knows about the model: metrics.json, the resolved config, the test predictions
    (and `inputs`: the test rows' input_chars, input_tokens, input_unknown, the service's drift reference)."""
    import numpy as np
    import yaml

    folder = Path(folder)
    # Numbers only (never the texts), for the report's confusion matrix, ROC and calibration plots.
    np.savez_compressed(folder / PREDICTIONS_FILE, labels=labels, probs=probs, label_names=np.array(label_names),
                        **{k: np.asarray(v) for k, v in (inputs or {}).items() if k in INPUT_ARRAYS})
    (folder / METRICS_FILE).write_text(json.dumps(report, indent=2, default=str))
    (folder / SETTINGS_FILE).write_text(yaml.safe_dump(config, sort_keys=False))


def write_decision(folder: Path, decision: dict) -> Path:
    """decision.json: {"conformal": {method, coverage, threshold, calibration_rows}}, checked as it
    will be read (a folder is never written with a file its readers would refuse)."""
    path = Path(folder) / DECISION_FILE
    check_decision(decision, str(path))
    path.write_text(json.dumps(decision, indent=2))
    return path


def write_card(folder: Path, text: str) -> Path:
    """The model card (README.md, rendered by promotion/card.py from metrics.json)."""
    path = Path(folder) / CARD_FILE
    path.write_text(text)
    return path


# --- reading --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What a promoted folder says about how to use its model (no weights loaded)."""

    folder: Path  # the resolved version folder: every file of this load comes from it
    layout: str  # MERGED or ADAPTER
    label_names: list[str]
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    max_length: int = 512
    batch_size: int = 64
    version: Optional[str] = None
    # decision.json, type-checked (check_decision); None: a folder without one (promoted before it).
    decision: Optional[dict] = None


def _field(container: dict, key: str, kinds, where: str, default=None):
    """container[key] if it has one of the expected types; else a one-line ConfigError."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    value = container.get(key, default) if isinstance(container, dict) else default
    # bool is an int to Python: a flag where a number belongs is a malformed file too.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{where}: field {key!r} has an unexpected value {str(value)[:80]!r}")
    return value


def _read_mapping(path: Path, kind: str = "JSON") -> dict:
    """A JSON or YAML file that must hold a mapping; anything unreadable is a one-line ConfigError."""
    import yaml

    from medsweep.hf import read_json_mapping

    if kind == "JSON":
        return read_json_mapping(path)
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read as {kind}: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return value


def resolve_folder(path: str | Path) -> Path:
    """The version folder `path` names, links resolved once (a promotion in between cannot mix two
    versions into one load)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model folder not found: {path}")
    return folder.resolve()


def read_settings(path: str | Path) -> Settings:
    folder = resolve_folder(path)
    if (folder / BASE_MODEL_FILE).exists():
        layout = ADAPTER
        reference = read_base_reference(folder)
        label_names = reference["label_names"]
    elif (folder / MODEL_CONFIG).exists():
        layout = MERGED
        label_names = _label_names(_read_mapping(folder / MODEL_CONFIG), folder / MODEL_CONFIG)
    else:
        raise ConfigError(f"{path} is not a model folder (no {MODEL_CONFIG} or {BASE_MODEL_FILE}); "
                          f"pass the promoted/ folder of a run")
    values = {}
    if (folder / SETTINGS_FILE).exists():
        config = _read_mapping(folder / SETTINGS_FILE, "YAML")
        where = str(folder / SETTINGS_FILE)
        data_cfg, trainer = config.get("data", {}), config.get("trainer", {})
        values = {"text_column": _field(data_cfg, "text_column", str, where),
                  "text_pair_column": _field(data_cfg, "text_pair_column", (str, type(None)), where),
                  "max_length": _field(trainer, "max_length", int, where),
                  "batch_size": _field(trainer, "eval_batch_size", int, where)}
    if (folder / METRICS_FILE).exists():
        values["version"] = _field(_read_mapping(folder / METRICS_FILE), "version", (str, type(None)),
                                   str(folder / METRICS_FILE))
    if (folder / DECISION_FILE).exists():
        values["decision"] = check_decision(_read_mapping(folder / DECISION_FILE), str(folder / DECISION_FILE))
        if len(values["decision"].get("offsets", label_names)) != len(label_names):
            raise ConfigError(f"{folder / DECISION_FILE}: offsets must have one number per label ({len(label_names)})")
    return Settings(folder=folder, layout=layout, label_names=label_names, **values)


DECISION_FIELDS = ("conformal", "offsets")
CONFORMAL_FIELDS = ("method", "coverage", "threshold", "calibration_rows")
CONFORMAL_METHODS = ("lac",)


def check_decision(decision: dict, where: str) -> dict:
    """The fields of decision.json, type- and range-checked; an unknown field is refused."""
    import math

    unknown = sorted(set(decision) - set(DECISION_FIELDS)) if isinstance(decision, dict) else []
    conformal = _field(decision, "conformal", dict, where)
    unknown += sorted(set(conformal) - set(CONFORMAL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unexpected field(s) {', '.join(map(repr, unknown[:5]))}")
    checked = {"method": _field(conformal, "method", str, where),
               "coverage": float(_field(conformal, "coverage", (int, float), where)),
               "threshold": float(_field(conformal, "threshold", (int, float), where)),
               "calibration_rows": _field(conformal, "calibration_rows", int, where)}
    if checked["method"] not in CONFORMAL_METHODS:
        raise ConfigError(f"{where}: conformal method must be one of {CONFORMAL_METHODS}, got {checked['method'][:40]!r}")
    if not (math.isfinite(checked["coverage"]) and 0.0 < checked["coverage"] < 1.0):
        raise ConfigError(f"{where}: conformal coverage must be strictly between 0 and 1, got {checked['coverage']!r}")
    if not (math.isfinite(checked["threshold"]) and 0.0 <= checked["threshold"] <= 1.0):
        raise ConfigError(f"{where}: conformal threshold must be in [0, 1], got {checked['threshold']!r}")
    if checked["calibration_rows"] < 1:
        raise ConfigError(f"{where}: conformal calibration_rows must be >= 1, got {checked['calibration_rows']}")
    out = {"conformal": checked}
    if "offsets" in decision:
        # The decision rule: label = argmax(log p + offsets), one finite number per label.
        offsets = _field(decision, "offsets", list, where)
        if not offsets or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  for v in offsets):
            raise ConfigError(f"{where}: offsets must be a non-empty list of finite numbers")
        out["offsets"] = [float(v) for v in offsets]
    return out


def _label_names(model_config: dict, where: Path) -> list[str]:
    id2label = model_config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ConfigError(f"{where}: no id2label (not a sequence classifier?)")
    try:
        ordered = sorted((int(k), v) for k, v in id2label.items())
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: id2label keys must be class indices") from None
    if [k for k, _ in ordered] != list(range(len(ordered))) or not all(isinstance(v, str) for _, v in ordered):
        raise ConfigError(f"{where}: id2label must map 0..n-1 to label names")
    return [v for _, v in ordered]


# The fields a base reference may carry (precision.base_reference writes exactly these).
BASE_REFERENCE_FIELDS = ("name_or_path", "revision", "quantization", "dtype", "bitsandbytes", "label_names")


def check_base_reference(reference: dict, where: str) -> dict:
    """The fields of base_model.json, type-checked; a field outside the allow-list (trust_remote_code,
    a code revision, loader arguments) is refused, never passed on to a loader."""
    unknown = sorted(set(reference) - set(BASE_REFERENCE_FIELDS)) if isinstance(reference, dict) else []
    if unknown:
        raise ConfigError(f"{where}: unexpected field(s) {', '.join(map(repr, unknown[:5]))}; a base reference names "
                          f"only {', '.join(BASE_REFERENCE_FIELDS)} (remote code is never enabled by a file)")
    checked = {
        "name_or_path": _field(reference, "name_or_path", str, where),
        "revision": _field(reference, "revision", (str, type(None)), where),
        "quantization": _field(reference, "quantization", str, where, "none"),
        "dtype": _field(reference, "dtype", str, where, "float32"),
        "label_names": _field(reference, "label_names", list, where),
    }
    if checked["dtype"] not in COMPUTE_DTYPES:
        raise ConfigError(f"{where}: dtype must be one of {COMPUTE_DTYPES}, got {checked['dtype']!r}")
    if not checked["label_names"] or not all(isinstance(n, str) for n in checked["label_names"]):
        raise ConfigError(f"{where}: label_names must be a non-empty list of names")
    settings = reference.get("bitsandbytes")
    if settings is not None:
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: bitsandbytes must be a mapping")
        checked["bitsandbytes"] = {key: _field(settings, key, kind, where) for key, kind in BITSANDBYTES_FIELDS.items()}
        if checked["bitsandbytes"]["bnb_4bit_compute_dtype"] not in COMPUTE_DTYPES:
            raise ConfigError(f"{where}: bnb_4bit_compute_dtype must be one of {COMPUTE_DTYPES}")
    else:
        checked["bitsandbytes"] = None
    return checked


def read_base_reference(folder: Path) -> dict:
    return check_base_reference(_read_mapping(folder / BASE_MODEL_FILE), str(folder / BASE_MODEL_FILE))


def read_metrics(path: str | Path) -> dict:
    return _read_mapping(resolve_folder(path) / METRICS_FILE)


def read_test_predictions(path: str | Path) -> dict | None:
    """{labels, probs, label_names, inputs} of the test split at promotion, or None if the folder has
    none; inputs: {name: array} of INPUT_ARRAYS (empty for a folder promoted before they were saved)."""
    import numpy as np

    file = resolve_folder(path) / PREDICTIONS_FILE
    if not file.exists():
        return None
    with np.load(file, allow_pickle=False) as npz:  # arrays only: a pickle would run code
        return {"labels": npz["labels"], "probs": npz["probs"], "label_names": [str(n) for n in npz["label_names"]],
                "inputs": {name: npz[name] for name in INPUT_ARRAYS if name in npz.files}}


def quantization_kwargs(reference: dict) -> dict:
    """`from_pretrained` arguments that load the base as it was trained: 4-bit on this process's GPU."""
    if reference["bitsandbytes"] is None:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ConfigError("this model's base is 4-bit (QLoRA): loading it needs a CUDA GPU and bitsandbytes")
    # A 4-bit model cannot be moved after loading: put it on the GPU now.
    return {"quantization_config": BitsAndBytesConfig(**reference["bitsandbytes"]),
            "device_map": {"": torch.cuda.current_device()}}


def load(path: str | Path):
    """(model in eval mode, tokenizer, Settings) of a promoted folder, either layout."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medsweep.hf import check_model_folder

    settings = read_settings(path)
    folder = settings.folder
    # Refused before transformers sees the folder: nothing of the folder's own (code, pickles) may run.
    check_model_folder(folder, weights=settings.layout == MERGED)
    if settings.layout == ADAPTER:
        check_adapter(folder / ADAPTER_DIR)
    try:
        # Remote code is never enabled by a folder: its config or tokenizer asking for it is refused by transformers.
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if settings.layout == MERGED:
            model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True,
                                                                       trust_remote_code=False)
        else:
            model = _load_adapter_model(folder, tokenizer)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"could not load the model in {path}: {str(exc).strip().splitlines()[0]}") from None
    return model.eval(), tokenizer, settings


# adapter_config.json: the PEFT method and task medsweep writes; anything else is not one of its adapters.
ADAPTER_KIND = {"peft_type": "LORA", "task_type": "SEQ_CLS"}


def check_adapter(adapter: Path) -> None:
    """adapter/ holds a LoRA adapter for a sequence classifier, its weights in safetensors."""
    config = _read_mapping(adapter / ADAPTER_FILES[0]) if (adapter / ADAPTER_FILES[0]).exists() else None
    if config is None or not (adapter / ADAPTER_FILES[1]).exists():
        raise ConfigError(f"{adapter} must hold {' and '.join(ADAPTER_FILES)} (safetensors weights only)")
    for key, expected in ADAPTER_KIND.items():
        if config.get(key) != expected:
            raise ConfigError(f"{adapter / ADAPTER_FILES[0]}: {key} must be {expected!r}, got {str(config.get(key))[:40]!r}")
    if config.get("auto_mapping"):
        raise ConfigError(f"{adapter / ADAPTER_FILES[0]} names classes of its own (auto_mapping): refused")


def _load_adapter_model(folder: Path, tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from medsweep.hf import resolve_model

    from medsweep.hf import check_model_folder

    reference = read_base_reference(folder)
    labels = reference["label_names"]
    base_path = resolve_model(reference["name_or_path"])
    if Path(base_path).is_dir():  # a local base is a folder like any other: data only
        check_model_folder(base_path)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path, revision=reference["revision"], num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True, use_safetensors=True, trust_remote_code=False,
        dtype=getattr(torch, reference["dtype"]), **quantization_kwargs(reference))
    # Decoders pool the last token that is not padding: the model must know the pad id.
    base.config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(base, folder / ADAPTER_DIR)
