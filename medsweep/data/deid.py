"""De-identification: mask common identifiers in the texts as they are read (`data.deidentify=true`).

A documented rule set of regular expressions, not a model. Microsoft Presidio would be the maintained
library for this, but its recognisers need a spaCy language model downloaded from the network (none
reachable on the clusters this runs on) and pull in spaCy itself; a rule set is predictable, fast,
and testable. It is a safety net for accidental identifiers in research text, NOT a certified
de-identification of clinical notes (HIPAA Safe Harbor lists 18 identifier types; names without a
title or a "Name:" label, for instance, are not caught). Review a sample of the output.

Each rule replaces the identifier with a bracketed type tag, e.g. "Dr. [NAME]", "[DATE]", "MRN: [MRN]".
Rules run in the order below (the more specific first, so an e-mail is not half-eaten as a URL and a
street "Dr" is not a doctor's title). Years on their own, ages, doses, stages, p-values, blood
pressures and ranges are deliberately left alone: they carry the medical content.
"""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
           r"Terrace|Parkway|Pkwy|Square|Sq)")
# A capitalised word, including O'Brien, McDonald and Smith-Jones.
_CAPITALISED = r"[A-Z](?:[A-Za-z]*[a-z])?(?:['\-][A-Z]?[a-z]+)*"

# (type, pattern). Where a pattern has a group named "id", only that group is masked (the label
# before it, "MRN:" or "Dr.", stays: it tells a reader what was there).
RULES: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b")),
    ("url", re.compile(r"\b(?:https?://|www\.)[^\s<>\"]+[^\s<>\".,;:!?)]")),
    # 123-45-6789; not inside a longer run of digits and dashes.
    ("ssn", re.compile(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])")),
    # A record number after its label: "MRN: 123456", "medical record number 00123456", "chart #A12345".
    ("mrn", re.compile(r"\b(?:MRN|medical record(?:\s+(?:number|no\.?|#))?|record\s+(?:number|no\.?|#)|"
                       r"patient\s+(?:id|number|no\.?)|chart\s+(?:number|no\.?|#))\s*[:#]?\s*"
                       r"(?P<id>[A-Z]{0,3}\d[\d\-]{3,}\d)\b", re.IGNORECASE)),
    # (617) 555-0134, 617-555-0134, 617.555.0134, +44 20 7946 0958; separators required, so plain
    # numbers and measurements are not phone numbers.
    ("phone", re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)\s?\d{3,4}[\s.\-]\d{4}|"
                         r"\d{3}[.\-]\d{3}[.\-]\d{4}|\+?\d{2,4}\s\d{2,4}\s\d{3,4}\s\d{3,4})(?![\w.]*\d)")),
    # 03/14/2021, 14.03.21, 2021-03-14, March 14, 2021, 14 March 2021, Mar 14th 2021. The same
    # separator twice, so ranges like 12.5-13.2 are not dates.
    ("date", re.compile(r"(?<![\d.])(?:\d{1,2}([/.\-])\d{1,2}\1(?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2})(?![\d.]*\d)|"
                        rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b|"
                        rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b")),
    # A street line ("221 Baker Street", "12 Elm Ave."), and a city, state and ZIP ("Boston, MA 02115").
    ("address", re.compile(rf"\b\d{{1,5}}\s+(?:{_CAPITALISED}\s+){{1,3}}{_STREET}\b\.?|"
                           rf"\b{_CAPITALISED},\s+[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?\b")),
    # A name after a title ("Dr. Jane A. Smith", "Mrs O'Brien") or a "Name:"/"Patient:" label.
    ("name", re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof)(?:\.\s*|\s+)"
                        rf"(?P<id>{_CAPITALISED}(?:\s+[A-Z]\.)?(?:\s+{_CAPITALISED})?)|"
                        rf"\b(?:[Nn]ame|[Pp]atient|Pt)\s*:\s*(?P<id2>{_CAPITALISED}(?:\s+[A-Z]\.)?(?:\s+{_CAPITALISED}){{0,2}})")),
]
IDENTIFIER_TYPES = tuple(kind for kind, _ in RULES)


def deidentify_text(text: str, counts: Counter | None = None) -> str:
    """`text` with every identifier the rules find replaced by its tag; adds what was masked to `counts`."""
    for kind, pattern in RULES:
        tag = f"[{kind.upper()}]"

        def mask(match: re.Match) -> str:
            if counts is not None:
                counts[kind] += 1
            for group in ("id", "id2"):
                if group in pattern.groupindex and match.group(group):
                    start, end = match.span(group)
                    whole = match.group(0)
                    offset = match.start()
                    return whole[:start - offset] + tag + whole[end - offset:]
            return tag

        text = pattern.sub(mask, text)
    return text


def deidentify_frame(frame: pd.DataFrame, columns=("text", "text_pair")) -> tuple[pd.DataFrame, dict]:
    """The frame with its text columns masked, and the summary counts: identifiers masked per type
    and rows that had at least one."""
    counts: Counter = Counter()
    changed = pd.Series(False, index=frame.index)
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            continue
        masked = frame[column].map(lambda t: deidentify_text(t, counts))
        changed |= masked != frame[column]
        frame[column] = masked
    return frame, {"masked": {kind: int(counts[kind]) for kind in IDENTIFIER_TYPES},
                   "rows_changed": int(changed.sum())}
