"""De-identification rules on synthetic notes: what is masked, what is counted, what is left alone."""

from collections import Counter

import pandas as pd
import pytest

from medsweep import data
from medsweep.data.deid import IDENTIFIER_TYPES, deidentify_text
from tests.conftest import compose_config

# (note, identifiers it holds that must disappear, expected counts per type)
NOTES = [
    ("Seen by Dr. Jane A. Quillfeather on 03/14/2021 and by Mrs O'Brannigan on March 15, 2021.",
     ["Jane", "Quillfeather", "03/14/2021", "O'Brannigan", "March 15, 2021"], {"name": 2, "date": 2}),
    ("Call (617) 555-0134 or 617-555-0199, or +44 20 7946 0958; mail jq.feather@example.org.",
     ["555-0134", "617-555-0199", "7946 0958", "jq.feather@example.org"], {"phone": 3, "email": 1}),
    ("MRN: 88412093. SSN 987-65-4320. Lives at 4417 Wintermoor Street, Springvale, MA 02115.",
     ["88412093", "987-65-4320", "Wintermoor", "Springvale", "02115"], {"mrn": 1, "ssn": 1, "address": 2}),
    ("Patient: Zebulon Quartermain, admitted 2021-03-14; portal https://records.example.org/zq?id=7.",
     ["Zebulon", "Quartermain", "2021-03-14", "records.example.org"], {"name": 1, "date": 1, "url": 1}),
]

# Ordinary medical text that looks a little like identifiers: must pass unchanged.
CLEAN = [
    "Stage II adenocarcinoma treated with 5 mg daily; p < 0.05 (95% CI 1.2-3.4).",
    "BP 120/80 mmHg, HbA1c 7.5%, pressure 12.5-13.25 mmHg, 1/2 of 30 patients, ratio 1:2, IL-6 levels.",
    "Mean age 39 +/- 5.3 yr, enrolled in 2019, followed for 24 months; MS and MR imaging in 12 cases.",
    "Grade 3/4 toxicity in 10-15% of patients; doses of 10 mg/kg every 2-3 weeks; n = 1234567890 reads.",
    "The Dr. on call noted no change. Patients with ST elevation (V1-V4) were included.",
]


@pytest.mark.parametrize("note, secrets, expected", NOTES)
def test_each_identifier_type_is_masked_and_counted(note, secrets, expected):
    counts = Counter()
    masked = deidentify_text(note, counts)
    for secret in secrets:
        assert secret not in masked, f"{secret!r} survived: {masked}"
    for kind in expected:
        assert f"[{kind.upper()}]" in masked
    assert dict(counts) == expected


def test_labels_before_an_identifier_are_kept():
    assert deidentify_text("MRN: 123456 reviewed by Dr. Smith") == "MRN: [MRN] reviewed by Dr. [NAME]"


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_medical_text_is_left_alone(text):
    counts = Counter()
    assert deidentify_text(text, counts) == text
    assert sum(counts.values()) == 0


def test_load_splits_masks_every_split_and_counts_per_type(tmp_path):
    rows = []
    for i in range(45):
        note, _, _ = NOTES[i % len(NOTES)]
        rows.append({"text": f"Case {i}: {'cardiac' if i % 2 else 'renal'} findings. {note}", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "notes.csv", index=False)
    cfg = compose_config(["data=csv", f"data.path={tmp_path / 'notes.csv'}", "data.deidentify=true"])["data"]
    splits = data.load_splits(cfg)
    summary = splits.summary["deidentified"]
    expected = Counter()
    for i in range(45):
        expected.update(NOTES[i % len(NOTES)][2])
    assert summary["masked"] == {kind: expected[kind] for kind in IDENTIFIER_TYPES}
    assert summary["rows_changed"] == 45
    texts = " ".join(pd.concat([splits.train, splits.validation, splits.test])["text"])
    for _, secrets, _ in NOTES:
        for secret in secrets:
            assert secret not in texts
    assert "de-identified: 45 rows changed" in data.describe(splits.summary)
    # Off (the default): the texts are read as they are.
    plain = data.load_splits({**cfg, "deidentify": False})
    assert "deidentified" not in plain.summary
    assert "Quartermain" in " ".join(plain.train["text"])
