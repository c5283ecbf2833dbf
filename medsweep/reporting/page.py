"""The report's page: index.html, the promoted model's test metrics first, then the search range
hints, the leaderboard and the plots, in one self-contained file beside the PNGs.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medsweep.reporting.run_data import SweepData, short_names

if TYPE_CHECKING:  # the page only lays figures out: it needs no matplotlib
    from medsweep.reporting.figures import Figure

INDEX_FILE = "index.html"

SORTABLE_TABLE_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const key = r => { const t = r.cells[col].textContent.trim(), n = t === "" ? NaN : Number(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
"""


# Numbers on the page: 3 significant digits (a CI's width is in the second or third digit of a
# test metric on a few hundred rows; more digits are noise), tables narrow enough for a laptop.
DIGITS = 3
# Leaderboard columns beyond these stay in leaderboard.csv: a table wider than the page is unread.
MAX_PARAMETER_COLUMNS = 5
# The headline metrics, in the order the promoted model's table lists them.
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "auroc", "auprc", "ece",
            "sensitivity", "specificity")


def _fmt(value) -> str:
    """A cell: floats to 3 significant digits (trailing zeros kept), ints as they are, text escaped."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 10 ** DIGITS or abs(value) < 1e-3):
            return f"{value:.{DIGITS - 1}e}"
        return f"{value:#.{DIGITS}g}".rstrip(".")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return html.escape(str(value))


def _interval(bounds) -> str:
    if not bounds or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in bounds):
        return ""
    return f"{_fmt(float(bounds[0]))} – {_fmt(float(bounds[1]))}"


def html_table(header: list[str], rows: list[list], css: str = "") -> str:
    """`rows` cells are already HTML (formatted by _fmt); header cells are escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def test_metrics_html(promoted: dict) -> str:
    """The promoted model's test metrics with their 95% CIs, then per-class F1 with CIs and support."""
    test, intervals = promoted["test"], (promoted.get("test_ci") or {}).get("intervals", {})
    rows = [[html.escape(name.replace("_", " ")), _fmt(test[f"test_{name}"]), _interval(intervals.get(f"test_{name}"))]
            for name in HEADLINE if f"test_{name}" in test]
    parts = [html_table(["metric", "test", "95% CI"], rows, "metrics")]
    per_class = test.get("test_f1_per_class") or {}
    if per_class:
        ci = intervals.get("test_f1_per_class") or {}
        matrix = (promoted.get("confusion_matrix") or {}).get("matrix")
        support = {name: sum(row) for name, row in zip(promoted["confusion_matrix"]["labels"], matrix)} if matrix else {}
        class_rows = [[html.escape(str(name)), _fmt(value), _interval(ci.get(name)), _fmt(support.get(name, ""))]
                      for name, value in per_class.items()]
        parts.append(html_table(["class", "F1", "95% CI", "test rows"], class_rows, "metrics"))
    return '<div class="side">' + "".join(parts) + "</div>"


def conformal_html(promoted: dict) -> str:
    """Test coverage of the prediction sets at each target level, with its binomial CI, and the mean
    set size per true class (metrics.json's conformal section); "" for a model promoted without one."""
    conformal = promoted.get("conformal") or {}
    levels = conformal.get("levels") or ([{"coverage": conformal["coverage"], "threshold": conformal["threshold"],
                                           "test": conformal["test"]}] if conformal.get("test") else [])
    if not levels:
        return ""
    rows = [[f"{level['coverage']:.0%}", _fmt(level["test"]["coverage"]), _interval(level["test"]["coverage_ci"]["interval"]),
             _fmt(level["test"]["mean_set_size"])] for level in levels]
    names = list(levels[0]["test"]["per_class"])
    class_rows = [[html.escape(name), *[_fmt(level["test"]["per_class"][name]["mean_set_size"]) for level in levels]]
                  for name in names]
    fitted_on = conformal.get("fitted_on", "validation")
    return ('<div class="side">' + html_table(["target coverage", "test coverage", "95% CI", "mean set size"], rows, "metrics")
            + html_table(["true class", *[f"set size at {level['coverage']:.0%}" for level in levels]], class_rows, "metrics")
            + "</div>" + f"<p class=note>Split-conformal (LAC) prediction sets, thresholds fitted on the "
            f"{html.escape(str(conformal.get('calibration_rows', '')))} {html.escape(fitted_on)} rows; Clopper-Pearson "
            "95% intervals over the test rows.</p>")


def promoted_facts(data: SweepData) -> str:
    """Where the promoted model came from, one short line each."""
    promoted = data.promoted
    validation = promoted["validation"]
    facts = [("version", promoted.get("version")), ("trial", promoted.get("trial_id")), ("step", validation.get("step")),
             (f"validation {data.metric}", validation.get(data.metric))]
    robustness = promoted.get("seed_robustness") or {}
    if len(robustness.get("seeds") or []) > 1:
        facts.append((f"over seeds {robustness['seeds']}", f"{_fmt(robustness['mean'])} ± {_fmt(robustness['std'])}"))
    return "<p>" + " &middot; ".join(f"{html.escape(k)} <b>{_fmt(v)}</b>" for k, v in facts if v is not None) + "</p>"


def leaderboard_html(frame: pd.DataFrame, param_names=(), metric: str | None = None) -> str:
    """Rank, trial, a few hyperparameters (short names), the metric and headline scores, status;
    the full table is leaderboard.csv."""
    params = [c for c in frame.columns if c in set(param_names)] or [c for c in frame.columns if "." in c]
    shown = params[:MAX_PARAMETER_COLUMNS]
    named = short_names(shown)
    # best_value is the sweep metric's column again (under its own name when that is a headline score).
    drop = {"metric", *params[MAX_PARAMETER_COLUMNS:], *(["best_value"] if metric in frame.columns else [])}
    if "error" in frame.columns and frame["error"].fillna("").astype(str).str.strip().eq("").all():
        drop.add("error")
    rest = [c for c in frame.columns if c not in drop and c not in shown and c != "trial_id"]
    columns = [*(["trial_id"] if "trial_id" in frame.columns else []), *shown, *rest]
    titles = {"trial_id": "trial", "best_value": metric or "best", "best_step": "best step", "evaluations": "evals"}
    header = ["rank", *(titles.get(c) or named.get(c) or c.removeprefix("val_") for c in columns)]
    rows = []
    for rank, row in enumerate(frame[columns].itertuples(index=False), 1):
        cells = [_fmt(v) if not (c == "error" and isinstance(v, str) and len(v) > 60) else html.escape(v[:57]) + "..."
                 for c, v in zip(columns, row)]
        rows.append([str(rank), *cells])
    note = (f"<p class=note>{len(params) - len(shown)} more hyperparameter column(s) in leaderboard.csv.</p>"
            if len(params) > len(shown) else "")
    return '<div class="wide">' + html_table(header, rows, "sortable") + "</div>" + note


def write_index(data: SweepData, figures: list[Figure], out_dir: Path) -> Path:
    sweep = data.config["sweep"]
    direction = "higher" if data.mode == "max" else "lower"
    facts = [f"sweep <b>{html.escape(str(sweep['name']))}</b>", f"{len(data.trials)} trial(s) with results",
             f"metric <b>{html.escape(data.metric)}</b> ({direction} is better)"]
    parts = [f"<h1>medsweep report: {html.escape(data.run_dir.resolve().name)}</h1>",
             "<p>" + " &middot; ".join(facts) + "</p>"]
    if data.promoted:
        parts += ["<h2 id=promoted>Promoted model: test split</h2>", promoted_facts(data),
                  test_metrics_html(data.promoted),
                  ("<p class=note>95% percentile-bootstrap intervals over the test rows (promoted/metrics.json). "
                   "ECE: lower is better.</p>")]
        sets = conformal_html(data.promoted)
        if sets:
            parts += ["<h3 id=prediction-sets>Prediction sets</h3>", sets]
    hints = (data.promoted or {}).get("range_hints") or []
    if hints:  # the best trials at a range's edge (medsweep/search/edges.py)
        parts += ["<h2>Search range</h2>", "<ul>" + "".join(f"<li>{html.escape(h['message'])}</li>" for h in hints) + "</ul>"]
    if data.leaderboard is not None and not data.leaderboard.empty:
        parts += ["<h2>Leaderboard</h2>", "<p class=note>Validation scores at each trial's best step. Click a column to sort.</p>",
                  leaderboard_html(data.leaderboard, data.param_specs, data.metric)]
    for figure in figures:
        parts += [f'<h2 id="{figure.name}">{html.escape(figure.title)}</h2>',
                  f"<p>{html.escape(figure.caption)}</p>",
                  f'<a href="{figure.name}.png"><img src="{figure.name}.png" alt="{html.escape(figure.title)}"></a>']
    if data.skipped:
        parts += ["<h2>Not drawn</h2>", "<ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                                                         for k, v in data.skipped.items()) + "</ul>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:.9em;margin:0 0 1em}"
             "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}table.sortable th{cursor:pointer;max-width:9em;white-space:normal}"
             ".side{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}.wide{overflow-x:auto;max-width:100%}"
             ".note{color:#666;font-size:.9em}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>medsweep report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}<script>{SORTABLE_TABLE_JS}</script></body></html>\n")
    index = out_dir / INDEX_FILE
    index.write_text(page)
    return index
