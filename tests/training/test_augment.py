"""Augmentation: seeded, what each mode does, and never anywhere but the rows a trial trains on."""

import random

import pandas as pd
import pytest

from medsweep.training import augment
from medsweep import data
from medsweep.training import trial
from medsweep.config import ConfigError, validate
from tests.conftest import TINY, compose_config

TEXT = "Results showed increased pressure in patients after treatment with the new method."


def test_each_mode_changes_text_as_documented():
    words = TEXT.split()
    synonyms = augment.augment_text(TEXT, "synonym", 0.5, random.Random(0))
    # rate 0.5 on 6 listed words: some replaced, unlisted words and the word count untouched.
    assert synonyms != TEXT and len(synonyms.split()) == len(words)
    changed = [(a, b) for a, b in zip(words, synonyms.split()) if a != b]
    assert changed and all(augment.SYNONYMS[a.rstrip(".").lower()] == b.rstrip(".").lower() for a, b in changed)
    assert all(a[0].isupper() == b[0].isupper() for a, b in changed)
    swapped = augment.augment_text(TEXT, "swap", 0.2, random.Random(0))
    assert swapped != TEXT and sorted(swapped.split()) == sorted(words)
    deleted = augment.augment_text(TEXT, "delete", 0.3, random.Random(0)).split()
    assert 0 < len(deleted) < len(words)
    assert all(w in words for w in deleted)
    assert augment.augment_text("word", "delete", 0.5, random.Random(1)) == "word"  # never an empty text


def test_augmentation_is_seeded_by_trainer_seed():
    train = pd.DataFrame({"text": [TEXT] * 20, "label": [0] * 20})
    cfg = {"augment": "delete", "augment_rate": 0.3, "seed": 1}
    assert augment.augment_training(train, cfg).equals(augment.augment_training(train, cfg))
    assert not augment.augment_training(train, cfg).equals(augment.augment_training(train, {**cfg, "seed": 2}))
    assert augment.augment_training(train, {**cfg, "augment": "none"}) is train


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="trainer.augment must be one of"):
        validate(compose_config(["trainer.augment=backtranslate"]))
    with pytest.raises(ConfigError, match="trainer.augment_rate"):
        validate(compose_config(["trainer.augment=delete", "trainer.augment_rate=0.9"]))


def test_augmented_rows_appear_only_in_training(tmp_path, monkeypatch):
    config = compose_config(TINY + ["trainer.augment=delete", "trainer.augment_rate=0.3", "trainer.epochs=1"], run_dir=tmp_path)
    splits = data.load_splits(config["data"])
    seen = []
    real_tokenize = trial.tokenize

    def spy(frame, tokenizer, max_length):
        seen.append(frame.copy())
        dataset = real_tokenize(frame, tokenizer, max_length)
        seen[-1].attrs["columns"] = dataset.column_names
        return dataset

    monkeypatch.setattr(trial, "tokenize", spy)
    result = trial.run_trial(config)
    train_rows, val_rows = seen
    # Training texts were perturbed (same rows, same labels, shorter texts) ...
    assert len(train_rows) == len(splits.train) and (train_rows["label"] == splits.train["label"]).all()
    changed = train_rows["text"] != splits.train["text"]
    assert changed.mean() > 0.9
    assert (train_rows["text"].str.split().str.len() <= splits.train["text"].str.split().str.len()).all()
    # ... validation was scored on exactly its own rows, and no augmented text reached it or the test split.
    assert data.fingerprint(val_rows) == splits.fingerprints["validation"] == result["data_fingerprints"]["validation"]
    augmented = set(train_rows["text"][changed])
    assert not augmented & set(val_rows["text"]) and not augmented & set(splits.test["text"])
    # The model input is token ids only: no group or other extra columns.
    assert set(val_rows.attrs["columns"]) <= {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
