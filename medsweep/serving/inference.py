"""Batched inference with a promoted model: what predict, serve and explain share, and what
promotion uses to score the test split.

Imports torch, transformers and PEFT (lazily, through medsweep.release.layout), never Ray or the
Trainer stack (medsweep.training): a deployed service loads only what inference needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medsweep.config import ConfigError
from medsweep.release import layout


def predict_proba(model, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                  max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """(len(texts), num_labels) softmax probabilities, in input order."""
    return _forward(model, tokenizer, texts, pairs, max_length, batch_size, softmax=True)


def predict_logits(model, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                   max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """(len(texts), num_labels) logits (float32 from the model, as float64), in input order: what
    promotion fits a temperature on (promotion/calibration.py)."""
    return _forward(model, tokenizer, texts, pairs, max_length, batch_size, softmax=False)


def _forward(model, tokenizer, texts, pairs, max_length: int, batch_size: int, softmax: bool) -> np.ndarray:
    import torch

    model.eval()
    device = next(model.parameters()).device
    # Sorting by length makes each padded batch tight; the result is put back in input order.
    order = np.argsort([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)])
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs is not None else None,
                              truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
            logits = model(**batch).logits.float()
            probs[idx] = (torch.softmax(logits, dim=-1) if softmax else logits).cpu().numpy()
    return probs


def prediction_sets(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(n, num_labels) booleans: the split-conformal (LAC) set of each row, every label whose
    score 1 - p is at most `threshold` (the promoted folder's decision.json)."""
    return (1.0 - np.asarray(probs, dtype=np.float64)) <= threshold


REFER_LABEL = "refer"
_REFER_OPERATORS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal,
                    "==": np.equal, "!=": np.not_equal}


def refer_rule(text: Optional[str]):
    """`refer_when=set_size>1` (any of > >= < <= == != and a whole number) as a function of the set
    sizes returning which rows are referred; None for no rule. Raises ConfigError (one line)."""
    import re

    if not text:
        return None
    match = re.fullmatch(r"\s*set_size\s*(>=|<=|==|!=|>|<)\s*(\d+)\s*", text)
    if match is None:
        raise ConfigError(f"refer_when must look like set_size>1 (set_size, one of {' '.join(_REFER_OPERATORS)}, "
                          f"a whole number), got {text[:60]!r}")
    operator, bound = _REFER_OPERATORS[match.group(1)], int(match.group(2))
    return lambda sizes: operator(np.asarray(sizes), bound)


def check_refer_rule(rule, promoted: "PromotedModel") -> None:
    """A referral rule needs prediction sets: a folder without decision.json is refused in one line."""
    if rule is not None and promoted.conformal_threshold is None:
        raise ConfigError("refer_when needs prediction sets, and this model folder has none "
                          "(no decision.json: promoted before conformal sets, or without them)")


@dataclass
class PromotedModel:
    """A promoted folder loaded for inference, with the settings it was trained with."""

    model: object
    tokenizer: object
    label_names: list[str]
    text_column: str
    text_pair_column: Optional[str]
    max_length: int
    batch_size: int
    version: Optional[str] = None
    folder: Optional[Path] = None  # the version folder it was loaded from
    source: Optional[Path] = None  # the path it was asked to load (a `promoted` link): what a reload reads again
    # The folder's split-conformal threshold (decision.json); None: a folder without one, no sets.
    conformal_threshold: Optional[float] = None
    # The decision rule's per-class offsets on log p (decision.json); None: the plain argmax.
    offsets: Optional[list] = None

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The label index of each row: argmax(log p + offsets), or the argmax without a rule."""
        probs = np.asarray(probs)
        if self.offsets is None:
            return probs.argmax(axis=1)
        return np.argmax(np.log(np.clip(probs, 1e-12, 1.0)) + np.asarray(self.offsets), axis=1)

    def sets(self, probs: np.ndarray) -> Optional[np.ndarray]:
        """The prediction sets of these probabilities (booleans per label), or None without a threshold."""
        return None if self.conformal_threshold is None else prediction_sets(probs, self.conformal_threshold)

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        return predict_proba(self.model, self.tokenizer, list(texts), list(pairs) if pairs is not None else None,
                             max_length=self.max_length, batch_size=self.batch_size)


def load_promoted(model_dir: str | Path, **overrides) -> PromotedModel:
    """Load a promoted folder, either layout (safetensors weights only, no remote code).
    `overrides` replace the trained-with settings (text_column, text_pair_column, max_length,
    batch_size) where they are not None."""
    from medsweep.hf import quiet_libraries

    quiet_libraries()
    model, tokenizer, settings = layout.load(model_dir)
    import torch

    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:  # 4-bit bases are placed already
        model.to("cuda")
    values = {"text_column": settings.text_column, "text_pair_column": settings.text_pair_column,
              "max_length": settings.max_length, "batch_size": settings.batch_size}
    values.update({k: v for k, v in overrides.items() if v is not None})
    check_max_length(model, values["max_length"])
    conformal = (settings.decision or {}).get("conformal")
    return PromotedModel(model, tokenizer, settings.label_names, version=settings.version, folder=settings.folder,
                         source=Path(model_dir), conformal_threshold=conformal["threshold"] if conformal else None,
                         offsets=(settings.decision or {}).get("offsets"),
                         **values)


def check_max_length(model, max_length: int) -> None:
    """A max_length past the model's position embeddings would fail inside the forward pass (an index
    error with a traceback); it is refused up front with one line instead."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and not isinstance(positions, bool) and max_length > positions:
        raise ConfigError(f"max_length={max_length} is more than this model's {positions} positions")
