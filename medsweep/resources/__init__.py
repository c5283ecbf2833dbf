"""Data files shipped inside the package (their licenses: ATTRIBUTION.md), under the names that
`builtin:NAME` gives them.

One owner of those names for the two readers: medsweep.data (`builtin:medical_abstracts` as a data
file) and medsweep.builtin_models (the tiny tokenizers are learned from the abstracts). Imports
nothing of medsweep, so that either may use it without importing the other.
"""

from importlib import resources
from pathlib import Path

BUILTIN_FILES = {
    "medical_abstracts": "medical_abstracts.csv.gz",
    "medical_abstracts_labels": "medical_abstracts_labels.csv",
    "pubmedqa": "pubmedqa_pqal.jsonl.gz",
}


def builtin_file(name: str) -> Path:
    """The installed file of the shipped data file `name` (a key of BUILTIN_FILES)."""
    return Path(str(resources.files(__name__) / BUILTIN_FILES[name]))
