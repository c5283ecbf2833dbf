"""report/index.html reads well: the promoted model's test metrics lead, with CIs and per-class F1,
3 significant digits, no raw Python dicts, tables a laptop screen holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from medsweep.reporting.page import MAX_PARAMETER_COLUMNS, leaderboard_html

LAPTOP_PX = 1366


class Page(HTMLParser):
    """Headings in order, tables as lists of rows of cell texts, and all visible text."""

    def __init__(self):
        super().__init__()
        self.headings, self.tables, self.text = [], [], []
        self._in, self._cell, self._skip = None, None, False

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"):
            self._in = [tag, ""]
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag in ("script", "style"):
            self._skip = True

    def handle_endtag(self, tag):
        if tag in ("h1", "h2") and self._in:
            self.headings.append(self._in[1].strip())
            self._in = None
        elif tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None
        elif tag in ("script", "style"):
            self._skip = False

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._in:
            self._in[1] += data
        if self._cell is not None:
            self._cell += data


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def significant_digits(number: str) -> int:
    mantissa = number.lower().split("e")[0].lstrip("-+").replace(".", "").lstrip("0")
    return len(mantissa)


@pytest.fixture(scope="module")
def page(smoke_sweep):
    run_dir, _, _ = smoke_sweep
    return run_dir, parse(run_dir / "report" / "index.html")


def test_the_page_leads_with_the_promoted_models_test_metrics_and_cis(page):
    run_dir, parsed = page
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    assert parsed.headings[1] == "Promoted model: test split"
    assert parsed.headings.index("Leaderboard") > 1
    overall, per_class = parsed.tables[0], parsed.tables[1]
    assert overall[0] == ["metric", "test", "95% CI"]
    shown = {row[0]: row[1:] for row in overall[1:]}
    for name in ("accuracy", "f1_macro", "auroc", "ece"):
        value, (low, high) = metrics["test"][f"test_{name}"], metrics["test_ci"]["intervals"][f"test_{name}"]
        cell, interval = shown[name.replace("_", " ")]
        assert float(cell) == pytest.approx(value, rel=5e-3, abs=5e-4)
        a, b = (float(x) for x in interval.split(" – "))
        assert a == pytest.approx(low, rel=5e-3, abs=5e-4) and b == pytest.approx(high, rel=5e-3, abs=5e-4)
    assert per_class[0] == ["class", "F1", "95% CI", "test rows"]
    assert [row[0] for row in per_class[1:]] == list(metrics["test"]["test_f1_per_class"])
    for row in per_class[1:]:
        assert float(row[1]) == pytest.approx(metrics["test"]["test_f1_per_class"][row[0]], rel=5e-3, abs=5e-4)
    assert sum(int(row[3]) for row in per_class[1:]) == metrics["data_summary"]["split_sizes"]["test"]


def test_the_page_shows_set_coverage_at_both_levels_and_the_risk_coverage_curve(page):
    run_dir, parsed = page
    metrics = json.loads((run_dir / "promoted" / "metrics.json").read_text())
    coverage = next(t for t in parsed.tables if t[0] == ["target coverage", "test coverage", "95% CI", "mean set size"])
    levels = metrics["conformal"]["levels"]
    assert [row[0] for row in coverage[1:]] == ["90%", "95%"] == [f"{level['coverage']:.0%}" for level in levels]
    for row, level in zip(coverage[1:], levels):
        assert float(row[1]) == pytest.approx(level["test"]["coverage"], rel=5e-3, abs=5e-4)
        low, high = (float(x) for x in row[2].split(" – "))
        assert low == pytest.approx(level["test"]["coverage_ci"]["interval"][0], rel=5e-3, abs=5e-4)
        assert high == pytest.approx(level["test"]["coverage_ci"]["interval"][1], rel=5e-3, abs=5e-4)
    sizes = next(t for t in parsed.tables if t[0][0] == "true class")
    assert sizes[0][1:] == ["set size at 90%", "set size at 95%"]
    assert [row[0] for row in sizes[1:]] == list(levels[0]["test"]["per_class"])
    assert "Risk-coverage" in parsed.headings and (run_dir / "report" / "risk_coverage.png").exists()


def test_no_raw_dicts_and_every_number_in_three_significant_digits(page):
    _, parsed = page
    text = " ".join(parsed.text)
    assert not re.search(r"\{'|': |\{\"", text), "a raw dict repr on the page"
    for table in parsed.tables:
        for row in table[1:]:
            for cell in row:
                for number in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", cell):
                    assert significant_digits(number) <= 3, (cell, row)


def test_tables_fit_a_laptop_screen(page):
    _, parsed = page
    for table in parsed.tables:
        widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(table[0]))]
        assert len(table[0]) <= 12 and sum(widths) <= 120, table[0]


def test_a_wide_sweep_keeps_the_leaderboard_to_a_few_columns():
    params = [f"trainer.p{i}" for i in range(9)]
    frame = pd.DataFrame([{"trial_id": "t1", **{p: 0.123456789 for p in params}, "metric": "val_f1_macro",
                           "best_value": 0.5, "val_f1_macro": 0.5, "val_auroc": 0.7, "val_accuracy": 0.6,
                           "best_step": 10, "evaluations": 2, "status": "completed", "error": np.nan}])
    parsed = Page()
    parsed.feed(leaderboard_html(frame, params, "val_f1_macro"))
    (table,) = parsed.tables
    assert len(table[0]) == 1 + 1 + MAX_PARAMETER_COLUMNS + 6  # rank, trial, params, 3 scores, step, evals, status
    assert table[1][2] == "0.123" and "4 more hyperparameter column(s)" in " ".join(parsed.text)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium (Debian: apt-get install chromium)")
def test_in_a_headless_browser_nothing_is_wider_than_a_laptop_screen(page, tmp_path):
    run_dir, _ = page
    # The page plus one script that writes the document's width into the DOM chromium dumps.
    probe = tmp_path / "index.html"
    shutil.copytree(run_dir / "report", tmp_path, dirs_exist_ok=True)
    probe.write_text(probe.read_text().replace(
        "</body>", "<script>document.title='width='+document.documentElement.scrollWidth</script></body>"))
    # No background networking, first-run or component updates: the machine's network is closed, and a fresh
    # profile so that nothing of another run is read.
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={LAPTOP_PX},900",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    width = int(re.search(r"<title>width=(\d+)</title>", proc.stdout).group(1))
    assert width <= LAPTOP_PX
