"""The sweep report: PNG plots and an index.html that shows them, in `<run dir>/report/`.

    python -m medsweep.report RUN_DIR

Written at the end of every sweep, and again by the command above (on a copy of a run dir, too).
It reads only what a sweep leaves in its run dir: Ray's per-trial result.json files, the
leaderboard, the config Hydra saved, the promoted model's metrics.json and test_predictions.npz
(labels and probabilities, no text). It does not import Hydra.

Sweep plots: optimization history, hyperparameter importances and parallel coordinates (Optuna's
own plots, from a study rebuilt from Ray's results), learning curves of every trial. Promoted
model plots, on the test split: confusion matrix, one-vs-rest ROC curves, reliability diagram.

The jobs live in their own modules: run_data.py reads the run dir, sweep_plots.py and
model_plots.py draw, page.py writes index.html; this module runs them in order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsweep.reporting.model_plots import model_plots, subgroup_plots
from medsweep.reporting.page import INDEX_FILE, write_index
from medsweep.reporting.run_data import load
from medsweep.reporting.sweep_plots import learning_curves, sweep_plots
from medsweep.rundir import RunDir


def write_report(run_dir: str | Path, config: dict | None = None) -> Path:
    """Write `<run dir>/report/` (PNGs + index.html); returns the report folder."""
    data = load(run_dir, config)
    out_dir = RunDir(Path(run_dir)).report
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):  # a plot that cannot be drawn this time must not linger
        old.unlink()
    figures = []

    def draw(name: str, plots) -> None:
        # One plot's failure (an odd sweep, a library change) must not cost the others.
        try:
            figures.extend(plots(data, out_dir))
        except Exception as exc:  # noqa: BLE001  reported on the page and by the caller
            data.skipped[name] = f"failed: {type(exc).__name__}: {exc}"

    if data.trials:
        draw("sweep plots", sweep_plots)
        draw("learning_curves", learning_curves)
    elif "sweep plots" not in data.skipped:
        data.skipped["sweep plots"] = "no trial reported a result"
    draw("promoted model plots", model_plots)
    draw("subgroup plots", subgroup_plots)
    write_index(data, figures, out_dir)
    for name, reason in data.skipped.items():
        if reason.startswith("failed"):
            print(f"[medsweep] report: {name} {reason}", file=sys.stderr)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsweep.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a medsweep run directory (the one holding leaderboard.csv)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"medsweep.report: error: {run_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        out_dir = write_report(run_dir)
    except FileNotFoundError as exc:
        print(f"medsweep.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"[medsweep] report: {out_dir / INDEX_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
