"""Class weighting and oversampling; a text-pair task (PubMedQA) really trains with both."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from transformers import TrainingArguments

from medsweep import data
from medsweep.training import imbalance
from medsweep.training.model import build_model, load_tokenizer
from medsweep.search.space import apply_overrides, build_search_space
from medsweep.training.trial import run_trial, tokenize
from tests.conftest import compose_config

PAIR_TINY = [
    "data=pubmedqa", "model=tiny_random", "data.max_train_samples=60", "data.max_eval_samples=40",
    "trainer.epochs=2", "trainer.max_length=64", "trainer.batch_size=16", "trainer.learning_rate=5e-3",
    "cluster.cpus_per_trial=1",
]


def test_balanced_weights_are_sklearns_and_none_is_no_weighting():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = imbalance.class_weights(labels, 3, "balanced")
    np.testing.assert_allclose(weights.numpy(), compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6)
    assert weights[2] > weights[1] > weights[0]
    assert imbalance.class_weights(labels, 3, "none") is None
    # A class missing from a (subsampled) training split keeps weight 1 instead of failing.
    assert imbalance.class_weights(np.array([0, 0, 1]), 3, "balanced")[2] == 1.0


def test_oversampling_tops_every_class_up_to_the_largest_and_keeps_every_row():
    train = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [0] * 7 + [1] * 2 + [2] * 1})
    grown = imbalance.oversample(train, seed=0)
    assert grown["label"].value_counts().to_dict() == {0: 7, 1: 7, 2: 7}
    assert set(grown["text"]) == set(train["text"])
    assert grown.iloc[:10].equals(train)  # originals first, then the repeats
    pd.testing.assert_frame_equal(grown, imbalance.oversample(train, seed=0))
    assert imbalance.training_split(train, {"oversample": False, "seed": 0}) is train


def test_weighted_loss_applies_in_training_only(tmp_path):
    config = compose_config(["model=tiny_random"])
    model = build_model(config["model"], ["a", "b", "c"])
    weights = torch.tensor([0.5, 1.0, 4.0])
    trainer = imbalance.WeightedLossTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"),
                                            class_weights=weights)
    torch.manual_seed(0)
    inputs = {"input_ids": torch.randint(5, 100, (6, 12)), "attention_mask": torch.ones(6, 12, dtype=torch.long),
              "labels": torch.tensor([0, 0, 1, 2, 2, 1])}
    model.train()
    torch.manual_seed(1)
    weighted = trainer.compute_loss(model, dict(inputs))
    torch.manual_seed(1)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert weighted.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, inputs["labels"], weight=weights).item(), rel=1e-5)
    model.eval()
    plain = trainer.compute_loss(model, dict(inputs))
    with torch.no_grad():
        expected = model(**inputs).loss
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)


def test_imbalance_keys_are_search_dimensions():
    config = compose_config(["model=tiny_random"])
    space = {"trainer": {"class_weighting": {"type": "choice", "values": ["none", "balanced"]},
                         "oversample": {"type": "choice", "values": [False, True]}}}
    domains = build_search_space(space, config)
    assert set(domains["trainer"]) == {"class_weighting", "oversample"}
    sampled = apply_overrides(config, {"trainer": {"class_weighting": "balanced", "oversample": True}})
    assert sampled["trainer"]["class_weighting"] == "balanced" and sampled["trainer"]["oversample"] is True
    # ASHA's budget counts the oversampled rows when any trial may oversample.
    train = pd.DataFrame({"label": [0] * 8 + [1] * 2})
    config["sweep"]["search_space"] = space
    assert imbalance.max_training_rows(train, config) == 16
    config["sweep"]["search_space"] = {}
    assert imbalance.max_training_rows(train, config) == 10


def test_pair_task_trains_with_class_weighting_and_oversampling():
    config = compose_config(PAIR_TINY + ["trainer.class_weighting=balanced", "trainer.oversample=true"])
    splits = data.load_splits(config["data"])
    # Question and context reach the model as one pair: [CLS] question [SEP] context [SEP].
    encoded = tokenize(splits.train.head(4), load_tokenizer(config["model"]), 64)
    assert all(1 in row for row in encoded["token_type_ids"])

    result = run_trial(config)
    counts = splits.train["label"].value_counts()
    steps_per_epoch = math.ceil(counts.max() * len(counts) / 16)  # trained on the oversampled split
    assert [h["step"] for h in result["history"]] == [steps_per_epoch, 2 * steps_per_epoch]
    assert math.isfinite(result["train_loss"])
    for report in result["history"]:
        assert 0.0 <= report["val_f1_macro"] <= 1.0 and 0.0 <= report["val_auroc"] <= 1.0
    assert result["label_names"] == ["maybe", "no", "yes"]
    assert result["data_fingerprints"] == splits.fingerprints  # fingerprints name the data, not the resampling
