"""Is B really better than A? Two (or more) promoted models compared on the same test split.

    python -m medsweep.compare runs/a runs/b [runs/c ...] [--out DIR] [--resamples N] [--seed S]

Each later run is compared with the first (the baseline). The comparison is paired
(evaluation/paired.py): both models' saved test predictions (promoted/test_predictions.npz, numbers
only) are resampled with the same bootstrap rows, so the interval of the difference B - A reflects
only the test rows, not two independent draws. A difference is called
significant when its 95% interval excludes 0. Accuracy also gets McNemar's exact test: under "no
difference", the rows that exactly one model gets right split 50/50 between the two (an exact
binomial test, scipy.stats.binomtest).

Refused, with one line and exit 2, unless every model was tested on the same test split: same
test fingerprint in metrics.json and the same labels in the same order in the saved predictions
(the fingerprint ignores row order; pairing needs it).

Writes compare.md and compare.png (differences with their intervals) to --out (default: the
current directory).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from medsweep.config import ConfigError
# The comparison itself is evaluation/paired.py's (the promotion gate uses it too); re-exported here.
from medsweep.evaluation.paired import CONFIDENCE, HEADLINE, Model, check_same_test_split, compare_pair, mcnemar  # noqa: F401
from medsweep.release import layout
from medsweep.rundir import PROMOTED, promoted_folder


def load_model(path: str | Path) -> Model:
    """A run dir (its `promoted` model) or a promoted folder. Raises ConfigError with one line."""
    path = Path(path)
    # Resolved once: a promotion in between cannot pair one version's metrics with another's predictions.
    folder = layout.resolve_folder(promoted_folder(path))
    if not (folder / layout.METRICS_FILE).exists():
        raise ConfigError(f"{path}: no promoted model (no {PROMOTED}/{layout.METRICS_FILE})")
    metrics = layout.read_metrics(folder)
    saved = layout.read_test_predictions(folder)
    if saved is None:
        raise ConfigError(f"{path}: the promoted model has no saved test predictions ({layout.PREDICTIONS_FILE})")
    return Model(str(path), folder, metrics, np.asarray(saved["labels"]),
                 np.asarray(saved["probs"], dtype=np.float64), saved["label_names"])


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.3f}"


def verdict(row: dict) -> str:
    if not row["significant"]:
        return "no (CI includes 0)"
    return f"yes: {row['better']} better"


def comparison_lines(result: dict) -> list[str]:
    """compare.md's section for one pair (also what the command prints)."""
    from medsweep.markdown import table

    lines = [f"## B = `{result['b']}` vs A = `{result['a']}`", "",
             (f"{result['n']} test rows; differences are B - A, with paired percentile-bootstrap "
             f"{result['confidence']:.0%} intervals ({result['resamples']} resamples of the rows, seed "
             f"{result['seed']}). Significant: the interval excludes 0. ECE: lower is better."), ""]
    rows = [[r["metric"], fmt(r["a"]), fmt(r["b"]), signed(r["difference"]),
             f"[{signed(r['ci'][0])}, {signed(r['ci'][1])}]", verdict(r)] for r in result["metrics"]]
    lines += table(["metric", "A", "B", "B - A", "95% CI", "significant"], rows)
    m = result["mcnemar"]
    lines += ["", (f"McNemar's exact test (accuracy): {m['a_only']} rows only A gets right, {m['b_only']} only B; "
                  f"p = {m['p_value']:.3g} ({'significant' if m['p_value'] < 1 - result['confidence'] else 'not significant'}"
                  f" at {1 - result['confidence']:.2g})."), ""]
    return lines


def short_name(path: str) -> str:
    """The last two parts of a run's path (`runs/x/promoted` -> `x/promoted`), for a plot title."""
    return "/".join(Path(path).parts[-2:])


def plot(results: list[dict], out: Path) -> Path:
    """One panel per comparison: each metric's B - A with its interval; filled where significant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["metric"] for r in results[0]["metrics"]]
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 0.45 * len(names) + 1.5), squeeze=False,
                             sharey=True)
    for ax, result in zip(axes[0], results):
        y = np.arange(len(names))[::-1]
        for yi, row in zip(y, result["metrics"]):
            low, high = row["ci"]
            color = "tab:green" if row["better"] == "B" else "tab:red" if row["better"] == "A" else "tab:gray"
            ax.plot([low, high], [yi, yi], color=color, lw=2)
            ax.plot(row["difference"], yi, "o", color=color, mfc=color if row["significant"] else "white")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, names)
        ax.set_xlabel("B - A, 95% paired bootstrap CI\n(filled: significant; green: B better, red: A better)")
        ax.set_title(f"B={short_name(result['b'])} vs A={short_name(result['a'])}", fontsize=9)
    fig.tight_layout()
    path = out / "compare.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(paths: list[str], out: str | Path = ".", n_resamples: int = 1000, seed: int = 0) -> dict:
    """Load, check, compare every later run with the first, write compare.md and compare.png."""
    if len(paths) < 2:
        raise ConfigError("compare needs at least two runs: python -m medsweep.compare runs/a runs/b")
    models = [load_model(p) for p in paths]
    check_same_test_split(models)
    results = [compare_pair(models[0], other, n_resamples, seed) for other in models[1:]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Comparison of promoted models", "",
             f"Test split fingerprint `{models[0].metrics['data_fingerprints']['test']}` (the same for every model).",
             ""]
    for result in results:
        lines += comparison_lines(result)
    lines += ["![differences](compare.png)", ""]
    (out / "compare.md").write_text("\n".join(lines))
    plot(results, out)
    return {"results": results, "markdown": "\n".join(lines), "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsweep.compare",
                                     description="Compare promoted models on the same test split (paired bootstrap, McNemar).")
    parser.add_argument("runs", nargs="+", help="run dirs (or promoted folders); later ones are compared with the first")
    parser.add_argument("--out", default=".", help="where compare.md and compare.png go (default: .)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    try:
        done = compare(args.runs, args.out, args.resamples, args.seed)
    except ConfigError as exc:
        print(f"medsweep.compare: error: {exc}", file=sys.stderr)
        return 2
    print(done["markdown"])
    print(f"[medsweep] wrote {done['out'] / 'compare.md'} and {done['out'] / 'compare.png'}")
    return 0
