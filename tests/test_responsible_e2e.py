"""One real tiny run on real Medical Abstracts texts with synthetic group columns and injected
identifiers: the subgroup audit end to end, and de-identification as seen from the run directory
and the tracker (W&B offline, with log_examples on: the one setting that sends text to it)."""

import json

import numpy as np
import pandas as pd
import pytest

from medsweep.evaluation import subgroups
from medsweep import data
from tests.conftest import SHARED_DATA, TINY, compose_config, run_cli, wandb_env

# Identifiers injected into every other note; none may appear in any file the run writes.
IDENTIFIERS = "Seen by Dr. Zebulon Quartermain on 03/14/2021, MRN: 88412093, tel 617-555-0134, zq.feather@example.org."
SECRETS = ["Zebulon", "Quartermain", "03/14/2021", "88412093", "617-555-0134", "zq.feather@example.org"]
MASKED_PER_NOTE = {"name": 1, "date": 1, "mrn": 1, "phone": 1, "email": 1}
ROWS = 360


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("responsible")
    raw = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv").head(ROWS)
    injected = np.arange(ROWS) % 2 == 0
    raw["medical_abstract"] = np.where(injected, IDENTIFIERS + " " + raw["medical_abstract"], raw["medical_abstract"])
    raw["site"] = np.array(["north", "south", "east"])[np.arange(ROWS) % 3]
    raw["sex"] = np.where(np.arange(ROWS) % 5 < 2, "f", "m")
    path = base / "notes.csv"
    raw.to_csv(path, index=False)
    overrides = TINY + ["data=csv", f"data.path={path}", "data.text_column=medical_abstract",
                        "data.label_column=condition_label", "data.group_columns=[site,sex]", "data.deidentify=true",
                        "tracker=wandb", "tracker.log_examples=true", "promote.bootstrap_resamples=200"]
    run_dir = base / "run"
    proc = run_cli(*overrides, f"hydra.run.dir={run_dir}", env=wandb_env(base / "wandb_home"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, run_dir, compose_config(overrides, run_dir=run_dir), int(injected.sum())


def test_subgroup_metrics_match_the_test_predictions(run):
    _, run_dir, config, _ = run
    report = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    audit = report["subgroups"]
    assert set(audit["columns"]) == {"site", "sex"}
    predictions = np.load(run_dir / "promoted" / "test_predictions.npz")
    labels, preds = predictions["labels"], predictions["probs"].argmax(axis=1)
    groups = subgroups.group_columns(data.load_splits(config["data"]).test)
    gaps = []
    for column, entry in audit["columns"].items():
        values = groups[column]
        assert sum(g["n"] for g in entry["groups"].values()) == len(labels) == report["data_summary"]["split_sizes"]["test"]
        for value, scores in entry["groups"].items():
            rows = values == value
            assert scores["n"] == rows.sum()
            assert scores["accuracy"] == pytest.approx(np.mean(labels[rows] == preds[rows]))
        for metric in subgroups.AUDIT_METRICS:
            per_group = [g[metric] for g in entry["groups"].values()]
            gaps.append((max(per_group) - min(per_group), column, metric))
    difference, column, metric = max(gaps)
    gap = audit["largest_gap"]
    assert (gap["column"], gap["metric"]) == (column, metric) and gap["difference"] == pytest.approx(difference)

    card = (run_dir / "promoted" / "README.md").read_text()
    assert "## Subgroup performance" in card and f"differs by {difference:.4f}" in card
    index = (run_dir / "report" / "index.html").read_text()
    assert "Subgroups: site" in index and (run_dir / "report" / "subgroups_0.png").stat().st_size > 1000


def test_identifiers_never_reach_the_run_dir_or_the_tracker(run):
    base, run_dir, _, injected = run
    summary = json.loads((run_dir / "data_summary.json").read_text())["deidentified"]
    assert summary["rows_changed"] == injected
    assert {k: v for k, v in summary["masked"].items() if v} == {k: v * injected for k, v in MASKED_PER_NOTE.items()}
    # Text did reach the tracker (log_examples=true) — masked.
    (table,) = run_dir.glob("wandb/offline-run-*/files/media/table/validation_examples_*.table.json")
    assert "Dr. [NAME]" in table.read_text() and "MRN: [MRN]" in table.read_text()
    files = [p for p in list(run_dir.rglob("*")) + list((base / "wandb_home").rglob("*")) if p.is_file()]
    assert len(files) > 30
    for path in files:
        content = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in content, f"{secret!r} found in {path}"
