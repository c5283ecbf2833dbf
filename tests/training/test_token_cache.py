"""The token cache (medsweep/data/cache.py) through the trial's own data path: a real tokenizer, real
rows, entries on disk under the run dir."""

import copy

import pandas as pd

from medsweep.data import cache
from medsweep.training.model import load_tokenizer
from medsweep.training.trial import prepare_data, run_trial, tokenize
from tests.conftest import TINY, compose_config


def prepared(config: dict):
    return prepare_data(config, dict(config["trainer"]))


def entries(run_dir) -> set[str]:
    folder = run_dir / "cache" / "tokens"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def test_second_trial_hits_the_cache_and_trains_on_the_same_tokens(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 1
    first = run_trial(tiny_config)
    assert first["token_cache_hits"] == {"train": False, "validation": False}
    assert len(entries(tmp_path)) == 2
    # Another trial of the sweep (another learning rate): same rows, same tokenizer -> both hit.
    other = copy.deepcopy(tiny_config)
    other["trainer"]["learning_rate"] = 1e-3
    second = run_trial(other)
    assert second["token_cache_hits"] == {"train": True, "validation": True}
    assert len(entries(tmp_path)) == 2
    # A cached run trains exactly like the first: same seed, same learning rate, same tokens.
    again = run_trial(tiny_config)
    assert again["token_cache_hits"]["train"]
    assert [h["val_loss"] for h in again["history"]] == [h["val_loss"] for h in first["history"]]


def test_a_different_max_length_or_rows_misses(tiny_config, tmp_path):
    prepared(tiny_config)
    longer = copy.deepcopy(tiny_config)
    longer["trainer"]["max_length"] = 48
    data = prepared(longer)
    assert data.cache_hits == {"train": False, "validation": False}
    assert max(data.train_set["length"]) > 32  # really tokenized at 48, not read back at 32
    fewer = copy.deepcopy(tiny_config)
    fewer["data"]["max_train_samples"] = 64
    data = prepared(fewer)
    assert data.cache_hits == {"train": False, "validation": True} and len(data.train_set) == 64
    assert len(entries(tmp_path)) == 5


def test_a_changed_data_file_never_reads_the_stale_entry(tmp_path):
    source = pd.DataFrame({"text": [f"patient {i} has {'a tumour' if i % 2 else 'chest pain'} and fever" for i in range(60)],
                           "label": ["neoplasms" if i % 2 else "cardio" for i in range(60)]})
    path = tmp_path / "notes.csv"
    source.to_csv(path, index=False)
    config = compose_config(TINY + ["data=csv", f"data.path={path}", "data.max_train_samples=null",
                                    "data.max_eval_samples=null"], run_dir=tmp_path / "run")
    before = prepared(config)
    assert not before.cache_hits["train"] and prepared(config).cache_hits["train"]
    # Same file name, same size and row count, one word changed in every row.
    source["text"] = source["text"].str.replace("fever", "cough")
    source.to_csv(path, index=False)
    after = prepared(config)
    assert after.cache_hits == {"train": False, "validation": False}
    fresh = tokenize(after.train_rows, load_tokenizer(config["model"]), config["trainer"]["max_length"])
    assert after.train_set["input_ids"] == fresh["input_ids"] != before.train_set["input_ids"]


def test_the_cache_key_covers_row_order_and_the_tokenizer(tiny_config):
    rows = pd.DataFrame({"text": ["a b", "c d", "e f"], "label": [0, 1, 0]})
    tokenizer_id = cache.tokenizer_digest(load_tokenizer(tiny_config["model"]), tiny_config["model"])
    key = cache.cache_key(rows, tokenizer_id, 32)
    assert key == cache.cache_key(rows.copy(), tokenizer_id, 32)
    assert key != cache.cache_key(rows.iloc[::-1], tokenizer_id, 32)  # order is what the sampler draws from
    assert key != cache.cache_key(rows.assign(label=[1, 1, 0]), tokenizer_id, 32)
    assert key != cache.cache_key(rows, cache.tokenizer_digest(load_tokenizer(tiny_config["model"]),
                                                               dict(tiny_config["model"], revision="v2")), 32)


def test_cache_off_writes_nothing(tiny_config, tmp_path):
    tiny_config["data"]["cache"] = False
    assert prepared(tiny_config).cache_hits == {"train": False, "validation": False}
    assert entries(tmp_path) == set()
