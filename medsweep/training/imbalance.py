"""Class imbalance: a class-weighted training loss, and oversampling of the training split.

Both are plain config keys (`trainer.class_weighting: none|balanced`, `trainer.oversample`), so a
sweep can search over them like any hyperparameter. Validation and test rows are never resampled,
and the evaluation loss stays the plain cross-entropy, so trials with and without weighting are
scored on the same scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from transformers import Trainer


def class_weights(labels, num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class loss weights: None for "none"; n / (k * count) for "balanced" (sklearn's rule)."""
    if mode == "none":
        return None
    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def oversample(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every class topped up, by sampling its rows with replacement, to the largest class's count."""
    largest = int(train["label"].value_counts().max())
    parts = [train]
    for _, rows in train.groupby("label"):
        if len(rows) < largest:
            parts.append(rows.sample(n=largest - len(rows), replace=True, random_state=seed))
    return pd.concat(parts, ignore_index=True)


def training_split(train: pd.DataFrame, trainer_cfg: dict) -> pd.DataFrame:
    """The rows a trial trains on: the training split, oversampled if asked."""
    return oversample(train, trainer_cfg["seed"]) if trainer_cfg["oversample"] else train


def max_training_rows(train: pd.DataFrame, config: dict) -> int:
    """The most rows any trial of this sweep trains on (ASHA sizes its rungs from it)."""
    searched = config["sweep"]["search_space"].get("trainer", {}).get("oversample", {})
    if config["trainer"]["oversample"] or True in searched.get("values", []):
        return int(train["label"].value_counts().max() * train["label"].nunique())
    return len(train)


class WeightedLossTrainer(Trainer):
    """A Trainer whose training loss weights each class; evaluation keeps the unweighted loss."""

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        if class_weights is not None:
            # compute_loss below returns a per-batch mean: the Trainer divides it over accumulation steps.
            self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=self.class_weights.to(logits.device))
        return (loss, outputs) if return_outputs else loss
