"""The data readers, fuzzed with Hypothesis: random bytes, random CSV and JSON Lines shapes (odd
headers, ragged rows, quotes, nulls, nested values, gzip) through data.load_splits, the path every
training file takes. Each input is either a valid load or one ConfigError line; anything else (a
traceback) is a failure Hypothesis shrinks to its smallest example. Bounded: a few seconds in all."""

import gzip
import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsweep import data
from medsweep.config import ConfigError
from tests.conftest import compose_config

CFG = compose_config(["data=csv"])["data"]
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
OUTCOMES = {"loaded": 0, "refused": 0}

cells = st.one_of(st.text(max_size=12), st.integers(-5, 5).map(str), st.sampled_from(["", " ", '"', "a,b", "\n", "nan",
                                                                                       "NULL", "label", "\x00"]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                                     st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner,
                                                                                               max_size=3)), max_leaves=5)


def outcome(tmp_path, name: str, content: bytes, fmt: str, **extra) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    try:
        splits = data.load_splits(dict(CFG, path=str(path), format=fmt, **extra))
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip(), repr(exc)
        OUTCOMES["refused"] += 1
        return
    # A valid load is a real one: three disjoint, non-empty splits with integer labels.
    assert min(len(splits.train), len(splits.validation), len(splits.test)) > 0
    assert splits.train["label"].dtype.kind == "i"
    OUTCOMES["loaded"] += 1


@FUZZ
@given(content=st.binary(max_size=300), fmt=st.sampled_from(["csv", "jsonl", "parquet"]), gz=st.booleans())
def test_random_bytes(tmp_path_factory, content, fmt, gz):
    outcome(tmp_path_factory.mktemp("bytes"), "f.csv.gz" if gz else "f.csv", content, fmt)


@FUZZ
@given(header=st.one_of(st.just(["text", "label"]), st.just(["label", "extra", "text"]),
                        st.lists(st.sampled_from(["text", "label", "extra", "", "Text", "label "]), min_size=1, max_size=4)),
       rows=st.one_of(st.just([]), st.lists(st.lists(cells, max_size=5), max_size=30)), good=st.integers(0, 40),
       gz=st.booleans())
def test_random_csv_shapes(tmp_path_factory, header, rows, good, gz):
    # The good rows fill the text and label columns wherever the header put them.
    width = max(len(header), 1)
    at = {name: header.index(name) for name in ("text", "label") if name in header}
    good_rows = [[f"abstract {i}" if j == at.get("text") else "xyz"[i % 3] if j == at.get("label") else "v"
                  for j in range(width)] for i in range(good)]
    lines = [",".join(header)] + [",".join(row) for row in rows + good_rows]
    content = "\n".join(lines).encode("utf-8", "surrogatepass")
    content = gzip.compress(content) if gz else content
    outcome(tmp_path_factory.mktemp("csv"), "f.csv.gz" if gz else "f.csv", content, "csv")


@FUZZ
@given(records=st.one_of(st.just([]), st.lists(st.one_of(
           st.dictionaries(st.sampled_from(["text", "label", "other"]), json_values, max_size=3), json_values), max_size=20)),
       good=st.integers(0, 40), raw_lines=st.one_of(st.just([]), st.lists(st.text(max_size=10), max_size=3)))
def test_random_jsonl_shapes(tmp_path_factory, records, good, raw_lines):
    lines = [json.dumps(r) for r in records] + [json.dumps({"text": f"abstract {i}", "label": "xyz"[i % 3]})
                                                 for i in range(good)] + raw_lines
    outcome(tmp_path_factory.mktemp("jsonl"), "f.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass"), "jsonl")


def test_both_outcomes_were_exercised():
    """The fuzzing above reached both sides: inputs that load and inputs that are refused."""
    if not sum(OUTCOMES.values()):
        pytest.skip("counts the fuzz tests of this file: run it whole")
    print(f"data reader fuzz: {OUTCOMES}")
    assert OUTCOMES["loaded"] > 0 and OUTCOMES["refused"] > 0, OUTCOMES


def test_a_parquet_round_trip_still_loads(tmp_path):
    frame = pd.DataFrame({"text": [f"abstract {i}" for i in range(30)], "label": ["ab"[i % 2] for i in range(30)]})
    frame.to_parquet(tmp_path / "f.parquet")
    assert len(data.load_splits(dict(CFG, path=str(tmp_path / "f.parquet"), format="parquet")).train) > 0
