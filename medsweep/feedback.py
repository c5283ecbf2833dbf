"""What clinicians said of the served model's predictions (POST /feedback of `python -m medsweep.serve`).

usage:
    python -m medsweep.feedback export db=<runs/<run>/feedback.sqlite> output=<feedback.csv>
    python -m medsweep.feedback summary db=<runs/<run>/feedback.sqlite> [format=text|json]

export: every row to CSV (text masked where the model was trained de-identified; cells a
spreadsheet would run as formulas written as text). summary: per model version, the feedback
count, the agreement rate (share where the predicted label was marked right) with its 95% Wilson
interval, and the confusion of predicted vs right label. The database and its schema belong to
medsweep/serving/feedback.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from medsweep.serving.args import arg, tool_main
from medsweep.serving.feedback import export_csv, format_summary, summarize

COMMANDS = ("export", "summary")


@dataclass
class ExportArgs:
    db: str = arg("the feedback database (runs/<run>/feedback.sqlite)", metavar="<feedback.sqlite>")
    output: str = arg("the CSV file to write", metavar="<file.csv>")


@dataclass
class SummaryArgs:
    db: str = arg("the feedback database (runs/<run>/feedback.sqlite)", metavar="<feedback.sqlite>")
    format: Literal["text", "json"] = arg("text for people, json for tools", "text", "text|json")


def export(args: ExportArgs) -> Optional[str]:
    rows = export_csv(args.db, args.output)
    return f"{rows} feedback row(s) written to {args.output}"


def summary(args: SummaryArgs) -> None:
    result = summarize(args.db)
    print(json.dumps(result, indent=2) if args.format == "json" else format_summary(result))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        print(f"usage: python -m medsweep.feedback {{{'|'.join(COMMANDS)}}} key=value ... (-h for help)",
              file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "export":
        return tool_main("medsweep.feedback export", ExportArgs, rest, export)
    return tool_main("medsweep.feedback summary", SummaryArgs, rest, summary)


if __name__ == "__main__":
    sys.exit(main())
