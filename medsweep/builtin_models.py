"""Models medsweep builds itself, offline and deterministically: a 2-layer random BERT and a
2-layer random Llama, each with a tokenizer learned from the embedded abstracts. Real models for
fast tests and the smoke sweep; saved once per machine under hf.cache_dir().

`hf.resolve_model("builtin:tiny-random-bert")` asks for them by name (build()), for training and
for serving alike (a promoted adapter may name one as its base). So this module imports nothing of
medsweep but the shipped files (medsweep.resources): not medsweep.data, whose readers resolve
`builtin:` through medsweep.hf, and not medsweep.training, which a deployed service never loads.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from medsweep.resources import builtin_file

# Bump when a recipe changes, so stale caches are not reused.
VERSIONS = {"tiny-random-bert": "v2", "tiny-random-llama": "v1"}


def build(name: str, root: Path, quiet: Callable[[], None] = lambda: None) -> Path:
    """The folder of built-in model `name` under `root` (hf.cache_dir()), built on first use.
    `quiet` runs before a build (hf.quiet_libraries): save_pretrained's progress bar would land in
    the middle of a one-line error."""
    makers = {"tiny-random-bert": make_tiny_random_bert, "tiny-random-llama": make_tiny_random_llama}
    return build_once(Path(root) / f"{name}-{VERSIONS[name]}", makers[name], quiet)


def abstracts() -> list[str]:
    """The embedded Medical Abstracts texts, in file order: the corpus the tiny tokenizers are
    learned from. Read as medsweep.data reads the file (UTF-8, a byte-order mark dropped, cells as
    written): the same texts in the same order, without importing medsweep.data."""
    with gzip.open(builtin_file("medical_abstracts"), "rt", encoding="utf-8-sig", newline="") as f:
        return [row["medical_abstract"] for row in csv.DictReader(f)]


def build_once(target: Path, make, quiet: Callable[[], None] = lambda: None) -> Path:
    """Save `make()`'s (model, tokenizer) to `target` unless it is there. Parallel trials and test
    workers may ask at the same moment: a file lock, and a staging folder renamed into place, so
    nobody ever loads a half-written model."""
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():
            return target
        quiet()
        model, tokenizer = make()
        staging = target.with_name(target.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def make_tiny_random_bert():
    """A 2-layer, 64-wide BERT with random weights and a WordPiece vocabulary learned from the
    embedded medical abstracts: a real model for fast tests and the smoke sweep, built offline.
    Returns (model, tokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    texts = abstracts()
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


def make_tiny_random_llama():
    """A 2-layer, 64-wide Llama with random weights and a byte-level BPE learned from the embedded
    abstracts, as a causal LM (like a Hub checkpoint: the classifier head is new) and, like
    Llama 3's tokenizer, with bos and eos but no pad token. Built offline; deterministic.
    Returns (model, tokenizer); build() saves it once into the cache."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = abstracts()
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos_id, eos_id = bpe.token_to_id(bos), bpe.token_to_id(eos)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {eos} $B:1", special_tokens=[(bos, bos_id), (eos, eos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, model_max_length=512)

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return model, tokenizer
