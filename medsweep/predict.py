"""Batched inference with a classifier: class probabilities for texts (and optional text pairs)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from medsweep.model import load_promoted  # noqa: F401  (model, tokenizer) from a promoted folder, either layout


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                  max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """(len(texts), num_labels) softmax probabilities, in input order."""
    model.eval()
    device = next(model.parameters()).device
    # Sorting by length makes each padded batch tight; the result is put back in input order.
    order = np.argsort([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)])
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs is not None else None,
                          truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
        logits = model(**batch).logits.float()
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs
