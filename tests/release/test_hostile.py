"""Hostile folders: a model folder someone hands you is data. A config or tokenizer asking for the
folder's own Python, pickle-only weights, a base reference asking for remote code, a checkpoint whose
weights changed since they were saved: nothing of theirs runs (each plants code that would write a
marker file), and each is refused in one line by load_promoted, `medsweep.predict` (exit 2) and
promotion."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medsweep.config import ConfigError
from medsweep.hf import resolve_model, weight_digests
from medsweep.release import layout
from medsweep.serving import predict
from medsweep.serving.inference import load_promoted
from tests.conftest import ROOT

# Python that, if anything imports or unpickles it, leaves a marker: the proof that it did not run.
PAYLOAD = ("import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
           "from transformers import BertConfig as EvilConfig, BertForSequenceClassification as EvilModel\n"
           "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")


class Planted:
    """Unpickling this object runs `exec(code)`: what a hostile pytorch_model.bin does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random BERT as a two-class classifier folder (what a merged promoted model holds)."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    shutil.copytree(resolve_model("builtin:tiny-random-bert"), folder)
    edit_json(folder / "config.json", id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1})
    return folder


def edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def hostile(kind: str, tiny_model: Path, base: Path) -> tuple[Path, Path]:
    """(a promoted-style model folder of the given hostile kind, the marker its code would write)."""
    folder, marker = base / kind, base / f"{kind}.marker"
    shutil.copytree(tiny_model, folder)
    (folder / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    if kind == "remote_code_config":
        edit_json(folder / "config.json", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForSequenceClassification": "evil.EvilModel"})
    elif kind == "custom_tokenizer_class":
        edit_json(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
                  auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    elif kind == "custom_tokenizer_class_no_auto_map":
        edit_json(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer")
    elif kind == "pickle_only_weights":
        (folder / "model.safetensors").unlink()
        with open(folder / "pytorch_model.bin", "wb") as f:
            pickle.dump(Planted(f"open({str(marker)!r}, 'w').write('ran')"), f)
    elif kind in ("base_asks_for_remote_code", "base_is_remote_code"):
        # The adapter layout: a base reference naming a remote-code base folder, asking to trust it
        # (a field no base reference may carry) or not (the base folder itself would run code).
        remote_base = base / f"{kind}-base"
        shutil.copytree(tiny_model, remote_base)
        (remote_base / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
        edit_json(remote_base / "config.json", auto_map={"AutoModelForSequenceClassification": "evil.EvilModel"})
        (folder / "config.json").unlink()
        (folder / "model.safetensors").unlink()
        asks = {"trust_remote_code": True} if kind == "base_asks_for_remote_code" else {}
        (folder / layout.BASE_MODEL_FILE).write_text(json.dumps({
            "name_or_path": str(remote_base), "revision": None, "quantization": "none", "dtype": "float32",
            "bitsandbytes": None, "label_names": ["a", "b"], **asks}))
        if not asks:
            (folder / layout.ADAPTER_DIR).mkdir()
            (folder / layout.ADAPTER_DIR / "adapter_config.json").write_text(
                json.dumps({"peft_type": "LORA", "task_type": "SEQ_CLS"}))
            (folder / layout.ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"")
    return folder, marker


KINDS = {  # kind -> what the one line must say
    "remote_code_config": "auto_map",
    "custom_tokenizer_class": "auto_map",
    "custom_tokenizer_class_no_auto_map": "tokenizer_class 'EvilTokenizer'",
    "pickle_only_weights": "only pickled ones: pytorch_model.bin",
    "base_asks_for_remote_code": "'trust_remote_code'",
    "base_is_remote_code": "auto_map",
}


def test_a_plain_copy_of_the_same_folder_loads(tiny_model, tmp_path):
    """The control: the checks refuse the hostile parts, not the folder."""
    shutil.copytree(tiny_model, tmp_path / "plain")
    model = load_promoted(tmp_path / "plain")
    assert model.predict(["Acute myocardial infarction."]).shape == (1, 2)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_hostile_folder_is_refused_and_nothing_of_it_runs(kind, tiny_model, tmp_path):
    folder, marker = hostile(kind, tiny_model, tmp_path)
    with pytest.raises(ConfigError, match=KINDS[kind]) as caught:
        load_promoted(folder)
    assert "\n" not in str(caught.value)
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["Acute myocardial infarction."]}).to_csv(source, index=False)
    assert predict.main([f"model={folder}", f"input={source}", f"output={tmp_path / 'out.csv'}"]) == 2
    assert not (tmp_path / "out.csv").exists()
    assert not marker.exists(), "the folder's own code ran"


@pytest.mark.slow  # a fresh interpreter importing torch: 5-15 s; predict.main's exit 2 is in the default suite
def test_predict_cli_refuses_pickle_only_weights_in_one_line(tiny_model, tmp_path):
    folder, marker = hostile("pickle_only_weights", tiny_model, tmp_path)
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["Acute myocardial infarction."]}).to_csv(source, index=False)
    proc = subprocess.run([sys.executable, "-m", "medsweep.predict", f"model={folder}", f"input={source}",
                           f"output={tmp_path / 'out.csv'}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pytorch_model.bin" in lines[0] and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_base_reference_fields_are_allow_listed():
    good = {"name_or_path": "builtin:tiny-random-bert", "revision": None, "quantization": "none", "dtype": "float32",
            "bitsandbytes": None, "label_names": ["a", "b"]}
    assert layout.check_base_reference(good, "x")["name_or_path"] == "builtin:tiny-random-bert"
    for extra in ({"trust_remote_code": True}, {"code_revision": "main"}, {"device_map": "auto"}):
        with pytest.raises(ConfigError, match="unexpected field"):
            layout.check_base_reference({**good, **extra}, "x")
    with pytest.raises(ConfigError, match="'revision'"):
        layout.check_base_reference({**good, "revision": ["main"]}, "x")


def test_a_changed_checkpoint_weight_file_is_detected(tiny_model, tmp_path):
    """trial.json records each weight file's sha256; a truncated or flipped file no longer matches."""
    from medsweep.training.model import read_checkpoint_info

    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(tiny_model, checkpoint)
    info = {"metrics": {"evaluation": 1}, "config": {"model": {}}, "label_names": ["a", "b"],
            "data_fingerprints": {}, "weight_sha256": weight_digests(checkpoint)}
    (checkpoint / "trial.json").write_text(json.dumps(info))
    assert read_checkpoint_info(checkpoint)["label_names"] == ["a", "b"]
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ConfigError, match="does not match the sha256"):
        read_checkpoint_info(checkpoint)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped, same size
    with pytest.raises(ConfigError, match="does not match the sha256"):
        read_checkpoint_info(checkpoint)
    weights.unlink()
    with pytest.raises(ConfigError, match="missing"):
        read_checkpoint_info(checkpoint)
    (checkpoint / "trial.json").write_text(json.dumps({**info, "label_names": "a,b"}))
    with pytest.raises(ConfigError, match="label_names"):
        read_checkpoint_info(checkpoint)


@pytest.mark.parametrize("kind", ["remote_code_config", "pickle_only_weights"])
def test_a_hostile_checkpoint_is_refused_at_promotion(kind, tiny_model, tmp_path):
    """A checkpoint folder is read the same way: promotion refuses it before anything runs or is written."""
    from medsweep.promotion.release import promote_checkpoint

    folder, marker = hostile(kind, tiny_model, tmp_path)
    (folder / "trial.json").write_text(json.dumps({"metrics": {"evaluation": 1}, "config": {"model": {}},
                                                   "label_names": ["a", "b"], "data_fingerprints": {}}))
    with pytest.raises(ConfigError, match=KINDS[kind]):
        promote_checkpoint(folder, tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run" / "promoted").exists()
