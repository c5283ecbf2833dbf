"""Token-level augmentation of the training split (`trainer.augment`, `trainer.augment_rate`).

Three simple, seeded perturbations in the spirit of EDA (Wei & Zou 2019), applied word by word
(whitespace tokens) to every training text:

- synonym: each word found in SYNONYMS is replaced with probability `rate` by its synonym. The list
  is small and hand-checked to keep the meaning of medical text (no negations, laterality, numbers,
  units or disease names; "large" is not "big" in "large cell carcinoma"). WordNet is not used: it
  needs a corpus download and its synonyms are not medical-safe.
- swap: round(rate * words) random pairs of words change places (at least one pair).
- delete: each word is dropped with probability `rate` (at least one word is kept).

Texts are perturbed in place, not added as copies: the training split keeps its size, so every
value of `augment` costs the same steps and ASHA's rungs are unchanged, which keeps it a fair
search dimension. Only the rows a trial trains on are augmented (trial.py, after oversampling);
validation and test rows are never touched, and `text_pair` (a question, a context) is left as is.
"""

from __future__ import annotations

import random

import pandas as pd

# Both directions are used. Lower-case keys; the replacement copies the word's capitalisation.
_PAIRS = [
    ("showed", "demonstrated"), ("shows", "demonstrates"), ("increased", "elevated"), ("decreased", "reduced"),
    ("treatment", "therapy"), ("treatments", "therapies"), ("examined", "evaluated"), ("assessed", "measured"),
    ("frequent", "common"), ("uncommon", "rare"), ("method", "technique"), ("methods", "techniques"),
    ("results", "findings"), ("observed", "noted"), ("obtained", "acquired"), ("administered", "given"),
    ("investigated", "studied"), ("determine", "establish"), ("suggest", "indicate"), ("suggests", "indicates"),
    ("approximately", "about"), ("performed", "conducted"), ("subsequently", "later"), ("previously", "earlier"),
    ("patients", "subjects"), ("rapid", "fast"), ("initial", "first"), ("revealed", "showed"),
]
SYNONYMS: dict[str, str] = {**{a: b for a, b in _PAIRS}, **{b: a for a, b in _PAIRS if b not in dict(_PAIRS)}}


def _match_case(replacement: str, word: str) -> str:
    return replacement[0].upper() + replacement[1:] if word[:1].isupper() else replacement


def synonym(words: list[str], rate: float, rng: random.Random) -> list[str]:
    out = []
    for word in words:
        core = word.rstrip(".,;:!?)")
        tail = word[len(core):]
        key = core.lower()
        if key in SYNONYMS and rng.random() < rate:
            out.append(_match_case(SYNONYMS[key], core) + tail)
        else:
            out.append(word)
    return out


def swap(words: list[str], rate: float, rng: random.Random) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for _ in range(max(1, round(rate * len(words)))):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def delete(words: list[str], rate: float, rng: random.Random) -> list[str]:
    if not words:
        return words
    kept = [w for w in words if rng.random() >= rate]
    return kept or [rng.choice(words)]


OPERATIONS = {"synonym": synonym, "swap": swap, "delete": delete}


def augment_text(text: str, mode: str, rate: float, rng: random.Random) -> str:
    return " ".join(OPERATIONS[mode](text.split(), rate, rng))


def augment_training(train: pd.DataFrame, trainer_cfg: dict) -> pd.DataFrame:
    """The training rows with their texts perturbed as `trainer.augment` says (seeded by trainer.seed)."""
    mode = trainer_cfg.get("augment", "none")
    if mode == "none":
        return train
    rng = random.Random(trainer_cfg["seed"])
    rate = trainer_cfg["augment_rate"]
    return train.assign(text=[augment_text(t, mode, rate, rng) for t in train["text"]])
