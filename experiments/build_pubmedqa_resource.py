"""Build medsweep/resources/pubmedqa_pqal.jsonl.gz from the PubMedQA PQA-L release.

    python experiments/build_pubmedqa_resource.py [SOURCE_DIR]   # default: ../shared/data/pubmedqa

SOURCE_DIR holds ori_pqal.json and test_ground_truth.json from github.com/pubmedqa/pubmedqa
(commit 1cbae8e, data/; MIT license). One JSON object per line:
pmid, question, context (the CONTEXTS paragraphs joined by a space), label (final_decision:
yes/no/maybe), split ("test" for the 500 official test PMIDs, "train" for the other 500, from which
medsweep draws validation). LONG_ANSWER is left out: it states the answer. Output is byte-for-byte
reproducible (gzip mtime 0, PMIDs in the release's order).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "medsweep" / "resources" / "pubmedqa_pqal.jsonl.gz"


def build(source: Path) -> list[dict]:
    items = json.loads((source / "ori_pqal.json").read_text())
    test = json.loads((source / "test_ground_truth.json").read_text())
    assert len(items) == 1000 and len(test) == 500 and set(test) <= set(items)
    for pmid, label in test.items():
        assert items[pmid]["final_decision"] == label, pmid
    return [
        {"pmid": pmid, "question": item["QUESTION"].strip(), "context": " ".join(c.strip() for c in item["CONTEXTS"]),
         "label": item["final_decision"], "split": "test" if pmid in test else "train"}
        for pmid, item in items.items()
    ]


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "pubmedqa"
    rows = build(source)
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    with open(TARGET, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(payload)
    print(f"wrote {len(rows)} items ({sum(r['split'] == 'test' for r in rows)} test) to {TARGET} "
          f"({TARGET.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
