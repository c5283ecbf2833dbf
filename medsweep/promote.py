"""Promote the best checkpoint of a sweep to `<run dir>/promoted/`.

The best checkpoint is the best *evaluation step* over all trials (Ray keeps each trial's best
checkpoint by `sweep.metric`), not the trial's last step. The promoted folder is a plain
`save_pretrained` model (LoRA merged in; the adapter kept under adapter/) that
`transformers.pipeline("text-classification", model=...)` loads, plus metrics.json and the config.

Promotion is atomic: the new version is written in full under promoted-versions/vNNN, then the
`promoted` symlink is swapped in one rename. A crash at any point leaves the previous promoted model
(if any) in place and loadable, and earlier versions are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import yaml
from transformers import AutoTokenizer

from medsweep import data
from medsweep.metrics import classification_metrics
from medsweep.model import ADAPTER_DIR, TRIAL_FILE, load_checkpoint, read_checkpoint_info
from medsweep.predict import predict_proba
from medsweep.trial import quiet_libraries

PROMOTED = "promoted"
VERSIONS = "promoted-versions"
TEST_PREDICTIONS = "test_predictions.npz"


def next_version_dir(run_dir: Path) -> Path:
    versions = run_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in versions.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name))]
    return versions / f"v{max(numbers, default=0) + 1:03d}"


def evaluate_test_split(model, tokenizer, config: dict, predictions_path: Path | None = None) -> tuple[dict, dict]:
    """Test metrics of the promoted model: the only time the test split is scored.

    With `predictions_path`, the labels and probabilities (numbers only, never the texts) are saved
    there for the report's confusion matrix, ROC and calibration plots."""
    splits = data.load_splits(config["data"])
    test = splits.test
    pairs = test["text_pair"].tolist() if "text_pair" in test.columns else None
    probs = predict_proba(model, tokenizer, test["text"].tolist(), pairs,
                          max_length=config["trainer"]["max_length"], batch_size=config["trainer"]["eval_batch_size"])
    scores = {f"test_{k}": v for k, v in classification_metrics(test["label"].to_numpy(), probs).items()}
    if predictions_path is not None:
        np.savez_compressed(predictions_path, labels=test["label"].to_numpy(), probs=probs,
                            label_names=np.array(splits.label_names))
    return scores, splits.summary


def promote_checkpoint(checkpoint_dir: str | Path, run_dir: str | Path, provenance: dict | None = None) -> Path:
    """Write the checkpoint as a loadable model with its metrics and swap it in as `promoted`."""
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    quiet_libraries()
    info = read_checkpoint_info(checkpoint_dir)
    config = info["config"]

    target = next_version_dir(run_dir)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model = load_checkpoint(checkpoint_dir, merge=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (checkpoint_dir / ADAPTER_DIR).is_dir():
        shutil.copytree(checkpoint_dir / ADAPTER_DIR, staging / ADAPTER_DIR)
    shutil.copy2(checkpoint_dir / TRIAL_FILE, staging / TRIAL_FILE)

    test_scores, data_summary = evaluate_test_split(model, tokenizer, config, staging / TEST_PREDICTIONS)
    report = {
        "metric": config["sweep"]["metric"],
        "mode": config["sweep"]["mode"],
        "validation": info["metrics"],
        "test": test_scores,
        "label_names": info["label_names"],
        "data_fingerprints": info["data_fingerprints"],
        "data_summary": data_summary,
        "base_model": config["model"]["name_or_path"],
        "finetune": config["model"]["finetune"],
        **(provenance or {}),
    }
    (staging / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    (staging / "medsweep_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    os.replace(staging, target)
    link = run_dir / PROMOTED
    tmp_link = run_dir / f".{PROMOTED}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(target.relative_to(run_dir))
    os.replace(tmp_link, link)  # atomic on POSIX: readers see the old or the new model, never neither
    return link
