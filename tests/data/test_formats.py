"""Bad input is one clear line and exit 2, before Ray or any trial starts.

Data problems are checked through data.load_splits / sweep.preflight (what the CLI calls first);
a few go through the CLI to pin the exit code, the single line and the untouched run dir.
Config range checks live in tests/test_config.py.
"""

import gzip
import json
import time

import pandas as pd
import pytest

from medsweep import data
from medsweep.config import ConfigError
from medsweep.search.sweep import preflight
from tests.conftest import compose_config, run_cli

GOOD_ROWS = "".join(f"note number {i},{'ab'[i % 2]}\n" for i in range(12))


@pytest.fixture(scope="module")
def csv_cfg():
    return compose_config(["data=csv"])["data"]


def load(cfg: dict, path, **overrides):
    return data.load_splits(dict(cfg, path=str(path), **overrides))


# (file name, bytes, data.format, other data keys, message pattern)
BAD_FILES = [
    ("empty.csv", b"", "csv", {}, r"data file .*empty\.csv is empty"),
    ("blank.csv", b"\n  \n", "csv", {}, r"is empty"),
    ("empty.jsonl", b"", "jsonl", {}, r"is empty"),
    ("empty.parquet", b"", "parquet", {}, r"is empty"),
    ("header.csv", b"text,label\n", "csv", {}, r"header\.csv has a header but no data rows"),
    ("no_label.csv", b"text,dx\na,1\nb,2\n", "csv", {}, r"column 'label' not found in .*no_label\.csv; columns are \['text', 'dx'\]"),
    ("no_pair.csv", b"text,label\na,1\nb,2\n", "csv", {"text_pair_column": "context"},
     r"column 'context' not found .*columns are \['text', 'label'\]"),
    ("one_class.csv", ("text,label\n" + "".join(f"n {i},a\n" for i in range(9))).encode(), "csv", {},
     r"the label column 'label' has only one class \('a'\) after cleaning"),
    ("missing_label.csv", ("text,label\n" + GOOD_ROWS).encode() + b"no label here,\n", "csv", {},
     r"label column 'label' in .* has 1 missing value\(s\) \(first on data row 13\)"),
    ("null_label.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "jsonl", {},
     r"has 1 missing value\(s\) \(first on data row 2\)"),
    ("all_empty.csv", b"text,label\n,a\n  ,b\n,a\n", "csv", {}, r"all 3 texts in column 'text' are empty"),
    ("latin1.csv", b"text,label\nfine,a\ncaf\xe9 au lait,b\n", "csv", {},
     r"latin1\.csv is not valid UTF-8 text \(byte 0xe9 on line 3\): re-save it as UTF-8"),
    ("utf16.csv", "text,label\na,b\n".encode("utf-16"), "csv", {}, r"is UTF-16 encoded"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "csv", {}, r"image\.csv is a binary file, not CSV or JSON Lines text"),
    ("notes.json", b'{"text": "a", "label": "b"}\n', "csv", {}, r"notes\.json looks like JSON, not CSV: use data=jsonl"),
    ("notes.csv", b"text,label\na,b\n", "jsonl", {}, r"notes\.csv line 1 is not valid JSON: .*\(is this a CSV file\? use data=csv\)"),
    ("notes.txt", b"text,label\na,b\n", "parquet", {}, r"notes\.txt is not a Parquet file"),
    ("broken.csv.gz", b"\x1f\x8b\x08\x00garbage", "csv", {}, r"broken\.csv\.gz is a damaged gzip file"),
    ("fields.csv", b"text,label\na,1\nb,2,3\nc,1\n", "csv", {},
     r"malformed CSV in .*fields\.csv: line 3 has 3 fields but the header has 2"),
    ("quote.csv", b'text,label\na,1\n"b,2\nc,1\nd,2\n', "csv", {},
     r"malformed CSV in .*quote\.csv: the quoted field that starts on line 3 is never closed"),
    ("broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": \n', "jsonl", {},
     r"broken\.jsonl line 3 is not valid JSON: Expecting value at column 24"),
    ("array_line.jsonl", b'{"text": "a", "label": "x"}\n["b", "y"]\n', "jsonl", {}, r"line 2 is a JSON list, expected an object"),
    ("few.csv", ("text,label\n" + "".join(f"n {i},a\n" for i in range(10)) + "x,b\ny,b\n").encode(), "csv", {},
     r"too few rows to split: class 'b' has 2 row\(s\), need at least 3 per class"),
    ("split.csv", b"text,label,part\na,x,train\nb,y,holdout\n", "csv", {"split_column": "part"},
     r"split column 'part' in .* has value\(s\) \['holdout'\]; expected train, validation \(or val, dev\) and test"),
    ("no_train.csv", b"text,label,part\na,x,test\nb,y,validation\n", "csv", {"split_column": "part"},
     r"the data give no training rows: found only the split\(s\) \['test', 'validation'\]"),
]


@pytest.mark.parametrize("name, content, fmt, extra, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_data_file_is_one_clear_line(tmp_path, csv_cfg, name, content, fmt, extra, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load(csv_cfg, path, format=fmt, **extra)
    assert "\n" not in str(info.value)


def test_missing_path_and_unset_path(tmp_path, csv_cfg):
    with pytest.raises(ConfigError, match="data file not found: .*nope.jsonl"):
        load(csv_cfg, tmp_path / "nope.jsonl", format="jsonl")
    with pytest.raises(ConfigError, match="data.path is not set"):
        data.load_splits(csv_cfg)  # data=csv without data.path


def test_split_file_settings_that_contradict_each_other(tmp_path, csv_cfg):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + GOOD_ROWS)
    with pytest.raises(ConfigError, match="set either data.path .* or data.train_path .*, not both"):
        data.load_splits(dict(csv_cfg, path=str(train), train_path=str(train)))
    with pytest.raises(ConfigError, match="data.validation_path / data.test_path need data.train_path"):
        data.load_splits(dict(csv_cfg, test_path=str(train)))


def test_a_class_only_in_the_given_test_set_is_rejected(tmp_path, csv_cfg):
    (tmp_path / "train.csv").write_text("text,label\n" + GOOD_ROWS)
    (tmp_path / "test.csv").write_text("text,label\nheld out 1,a\nheld out 2,c\n")
    with pytest.raises(ConfigError, match="class 'c' has no training rows"):
        data.load_splits(dict(csv_cfg, train_path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv")))


def test_hf_hub_id_offline_fails_at_once(csv_cfg):
    started = time.time()
    with pytest.raises(ConfigError, match="dataset 'no-such-org/no-such-notes' is not a local folder nor in the "
                                          "Hugging Face cache, and HF_HUB_OFFLINE is set"):
        data.load_splits(dict(csv_cfg, format="hf", path="no-such-org/no-such-notes"))
    assert time.time() - started < 10


def test_hf_dataset_without_a_train_split(tmp_path, csv_cfg):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=r"has no train split; its splits are \['test'\]"):
        data.load_splits(dict(csv_cfg, format="hf", path=str(tmp_path / "ds")))


def test_gzipped_jsonl_and_json_array_are_read(tmp_path, csv_cfg):
    records = [{"text": f"note {i}", "label": "ab"[i % 2]} for i in range(20)]
    (tmp_path / "notes.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    (tmp_path / "notes.json").write_text(json.dumps(records, indent=1))
    for name in ("notes.jsonl.gz", "notes.json"):
        assert load(csv_cfg, tmp_path / name, format="jsonl").summary["rows_kept"] == 20


@pytest.mark.parametrize("name_or_path, message", [
    ("builtin:no-such-model", "unknown built-in model 'builtin:no-such-model'"),
    ("no-such-org/no-such-model", "model 'no-such-org/no-such-model' is not a local folder nor in the Hugging Face cache"),
])
def test_unknown_model_is_rejected_in_preflight(name_or_path, message):
    with pytest.raises(ConfigError, match=message):
        preflight(compose_config([f"model.name_or_path={name_or_path}"]))


def test_cli_bad_data_exits_2_with_one_line_before_ray(tmp_path):
    empty = tmp_path / "notes.csv"
    empty.write_text("")
    run_dir = tmp_path / "run"
    proc = run_cli("data=csv", f"data.path={empty}", "model=tiny_random", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"medsweep: error: data file {empty} is empty"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (run_dir / "ray").exists() and not (run_dir / "data_summary.json").exists()
    assert not (run_dir / ".hydra").exists()  # written only once the checks pass


def test_cli_full_error_switch_shows_the_traceback(tmp_path):
    proc = run_cli("data=csv", f"data.path={tmp_path / 'nope.csv'}", "model=tiny_random",
                   f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: data file not found" in proc.stderr


def test_cli_unknown_group_option_is_one_line_listing_the_options(tmp_path):
    proc = run_cli("data=csvv", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "Could not find 'data/csvv'" in line
    assert all(option in line for option in ("csv", "jsonl", "parquet", "hf", "pubmedqa", "medical_abstracts"))


def test_data_summary_never_holds_text(tmp_path, csv_cfg):
    sentence = "Patient Zyxwvut reports crushing chest pain radiating to the left arm"
    frame = pd.DataFrame([{"text": f"{sentence} {i}" if i == 0 else f"note {i}", "label": "ab"[i % 2]} for i in range(30)])
    frame.to_csv(tmp_path / "notes.csv", index=False)
    splits = load(csv_cfg, tmp_path / "notes.csv")
    assert "Zyxwvut" not in json.dumps(splits.summary) + data.describe(splits.summary)
