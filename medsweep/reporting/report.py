"""The sweep report: PNG plots and an index.html that shows them, in `<run dir>/report/`.

    python -m medsweep.report RUN_DIR

Written at the end of every sweep, and again by the command above (on a copy of a run dir, too).
It reads only what a sweep leaves in its run dir: Ray's per-trial result.json files, the
leaderboard, the config Hydra saved, the promoted model's metrics.json and test_predictions.npz
(labels and probabilities, no text). It does not import Hydra.

Sweep plots: optimization history, hyperparameter importances and parallel coordinates (Optuna's
own plots, from a study rebuilt from Ray's results), learning curves of every trial. Promoted
model plots, on the test split: confusion matrix, one-vs-rest ROC curves, reliability diagram.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from medsweep.evaluation.metrics import expected_calibration_error, reliability  # noqa: E402
from medsweep.release import layout  # noqa: E402
from medsweep.search.space import flatten, flatten_values  # noqa: E402

REPORT_DIR = "report"
DPI = 120
# Learning curves name this many of the best trials in the legend; the rest are drawn in grey.
LABELLED_TRIALS = 10


@dataclass
class TrialRecord:
    trial_id: str
    params: dict  # "trainer.learning_rate" -> value
    history: pd.DataFrame  # one row per evaluation, Ray's result.json
    started: float
    status: str = ""


@dataclass
class Figure:
    name: str
    title: str
    caption: str


@dataclass
class SweepData:
    run_dir: Path
    config: dict
    metric: str
    mode: str
    trials: list[TrialRecord]
    param_specs: dict  # "trainer.learning_rate" -> search space leaf
    leaderboard: pd.DataFrame | None
    promoted: dict | None  # promoted/metrics.json
    predictions: dict | None  # labels, probs, label_names
    skipped: dict = field(default_factory=dict)  # plot name -> why it was not drawn


# --- reading a run dir ---------------------------------------------------------------------------

def load_config(run_dir: Path) -> dict:
    for path in (run_dir / ".hydra" / "config.yaml", run_dir / "promoted" / layout.SETTINGS_FILE):
        if path.exists():
            return yaml.safe_load(path.read_text())
    raise FileNotFoundError(f"{run_dir} has neither .hydra/config.yaml nor promoted/medsweep_config.yaml: not a medsweep run dir")


def load_trials(sweep_dir: Path) -> list[TrialRecord]:
    trials = []
    for result_file in sorted(sweep_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        params_file = result_file.with_name("params.json")
        params = flatten_values(json.loads(params_file.read_text()) if params_file.exists() else rows[0].get("config", {}))
        started = rows[0].get("timestamp", 0) - rows[0].get("time_total_s", 0)
        trials.append(TrialRecord(rows[0]["trial_id"], params, pd.DataFrame(rows), started))
    return sorted(trials, key=lambda t: (t.started, t.trial_id))


def load(run_dir: str | Path, config: dict | None = None) -> SweepData:
    run_dir = Path(run_dir)
    config = config or load_config(run_dir)
    sweep = config["sweep"]
    storage = config["cluster"].get("storage_path")
    data = SweepData(run_dir=run_dir, config=config, metric=sweep["metric"], mode=sweep["mode"], trials=[],
                     param_specs=flatten(sweep.get("search_space") or {}), leaderboard=None, promoted=None,
                     predictions=None)
    if storage and "://" in storage:
        data.skipped["sweep plots"] = f"trial results are in remote storage ({storage}); copy them to read them"
    else:
        data.trials = load_trials(Path(storage or run_dir / "ray") / "sweep")
    leaderboard = run_dir / "leaderboard.csv"
    if leaderboard.exists():
        data.leaderboard = pd.read_csv(leaderboard, dtype={"trial_id": str})
        status = dict(zip(data.leaderboard["trial_id"], data.leaderboard["status"]))
        for trial in data.trials:
            trial.status = status.get(trial.trial_id, "")
    promoted = run_dir / "promoted"
    if (promoted / layout.METRICS_FILE).exists():
        data.promoted = layout.read_metrics(promoted)
        data.predictions = layout.read_test_predictions(promoted)
    return data


# --- helpers -------------------------------------------------------------------------------------

def best_value(trial: TrialRecord, metric: str, mode: str) -> float | None:
    values = pd.to_numeric(trial.history.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
    if values.empty:
        return None
    return float(values.max() if mode == "max" else values.min())


def short_names(names) -> dict[str, str]:
    """"trainer.learning_rate" -> "learning_rate", "model.lora.r" -> "lora.r" (as in the console table)."""
    short = {name: name.split(".", 1)[-1] for name in names}
    return short if len(set(short.values())) == len(short) else {name: name for name in names}


def wrap(label: str, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def save(fig, out_dir: Path, name: str) -> None:
    fig.savefig(out_dir / f"{name}.png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)


# --- sweep plots ---------------------------------------------------------------------------------

def build_study(data: SweepData):
    """An Optuna study holding each trial's best value, so Optuna's own plots and importance
    evaluators can be used on a sweep that Ray ran."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def distribution(spec: dict):
        kind = spec["type"]
        if kind == "choice":
            return CategoricalDistribution(spec["values"])
        if kind == "int":
            return IntDistribution(int(spec["lower"]), int(spec["upper"]), log=bool(spec.get("log")))
        return FloatDistribution(float(spec["lower"]), float(spec["upper"]), log=kind == "loguniform")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = short_names(data.param_specs)
    distributions = {names[path]: distribution(spec) for path, spec in data.param_specs.items()}
    study = optuna.create_study(direction="maximize" if data.mode == "max" else "minimize")
    for trial in data.trials:
        value = best_value(trial, data.metric, data.mode)
        if value is None or not math.isfinite(value):
            continue
        params = {names[path]: trial.params[path] for path in data.param_specs if path in trial.params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=value,
            user_attrs={"trial_id": trial.trial_id}))
    return study


def sweep_plots(data: SweepData, out_dir: Path) -> list[Figure]:
    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.visualization import matplotlib as optuna_mpl

    study = build_study(data)
    n = len(study.trials)
    figures = []
    direction = "higher" if data.mode == "max" else "lower"
    # Optuna switches the global style to ggplot on every call; keep that inside these plots.
    with plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if n >= 1:
            ax = optuna_mpl.plot_optimization_history(study, target_name=data.metric)
            ax.set_title(f"Optimization history: best {data.metric} per trial ({direction} is better)")
            ax.set_xlabel("Trial number (in start order)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            save(ax.figure, out_dir, "optimization_history")
            figures.append(Figure("optimization_history", "Optimization history",
                                  f"Each trial's best {data.metric} and the best so far, in the order trials started."))
        values = [t.value for t in study.trials]
        if n >= 2 and study.best_trial.params and max(values) == min(values):
            data.skipped["param_importances"] = f"all {n} trials scored the same {data.metric}: nothing to attribute"
        elif n >= 2 and study.best_trial.params:
            evaluator = FanovaImportanceEvaluator(seed=0)
            # Computed once here and passed in, so the plot and the caption agree.
            importances = get_param_importances(study, evaluator=evaluator)
            ax = optuna_mpl.plot_param_importances(study, evaluator=evaluator, target_name=data.metric)
            ax.set_title("", loc="left")  # Optuna's own title, which would overlap ours
            ax.set_title(f"Hyperparameter importances for {data.metric} (fANOVA, {n} trials)")
            save(ax.figure, out_dir, "param_importances")
            caveat = " With few trials this is indicative only." if n < 10 else ""
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(importances.items())[:3])
            figures.append(Figure("param_importances", "Hyperparameter importances",
                                  f"Share of the variance of {data.metric} explained by each hyperparameter "
                                  f"(Optuna's fANOVA evaluator): {top}.{caveat}"))
        else:
            data.skipped["param_importances"] = "needs at least 2 trials with a result and a search space"
    if n >= 2 and study.best_trial.params:
        parallel_coordinates(study, data, out_dir)
        figures.append(Figure("parallel_coordinates", "Parallel coordinates",
                              f"One line per trial through its hyperparameters (each axis spans the search range) "
                              f"to its best {data.metric}; the best trials are yellow and drawn on top."))
    else:
        data.skipped["parallel_coordinates"] = "needs at least 2 trials with a result and a search space"
    return figures


def parallel_coordinates(study, data: SweepData, out_dir: Path) -> None:
    """Drawn here rather than with Optuna's: its lowest-scoring line is white on a grey background
    and its log-axis labels sit on the lines."""
    from matplotlib.colors import Normalize
    from optuna.distributions import CategoricalDistribution

    trials = [t for t in study.trials if t.value is not None]
    distributions = {k: v for t in trials for k, v in t.distributions.items()}
    names = list(distributions)

    def position(name: str, value) -> float:
        dist = distributions[name]
        if isinstance(dist, CategoricalDistribution):
            return dist.choices.index(value) / max(1, len(dist.choices) - 1)
        low, high, value = dist.low, dist.high, value
        if dist.log:
            low, high, value = math.log10(low), math.log10(high), math.log10(value)
        return (value - low) / (high - low) if high > low else 0.5

    values = np.array([t.value for t in trials])
    vmin, vmax = float(values.min()), float(values.max())
    pad = 0.0 if vmax > vmin else max(abs(vmin) * 0.05, 0.01)  # all trials tied: a readable colour bar
    norm = Normalize(vmin - pad, vmax + pad)
    cmap = plt.get_cmap("viridis" if data.mode == "max" else "viridis_r")
    fig, ax = plt.subplots(figsize=(max(7.0, 2.3 * (len(names) + 1)), 5.2))
    order = np.argsort(values if data.mode == "max" else -values)  # best drawn last, on top
    for i in order:
        trial = trials[i]
        ys = [position(n, trial.params[n]) if n in trial.params else np.nan for n in names]
        ys.append(norm(values[i]))
        ax.plot(range(len(ys)), ys, color=cmap(norm(values[i])), lw=2.2, alpha=0.9, marker="o", ms=4)
    for x, name in enumerate(names + [data.metric]):
        ax.axvline(x, color="0.25", lw=1)
        if name == data.metric:
            ticks = [(0.0, vmin), (1.0, vmax)] if vmax > vmin else [(0.5, vmin)]
        elif isinstance(distributions[name], CategoricalDistribution):
            choices = distributions[name].choices
            ticks = [(position(name, c), c) for c in choices]
        else:
            dist = distributions[name]
            ticks = [(0.0, dist.low), (1.0, dist.high)]
        for y, label in ticks:
            text = f"{label:.3g}" if isinstance(label, float) else str(label)
            ax.annotate(text, (x, y), xytext=(-6, 0), textcoords="offset points", ha="right", va="center",
                        fontsize=9, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax.set_xticks(range(len(names) + 1), names + [data.metric], fontsize=10)
    ax.set_xlim(-0.6, len(names) + 0.2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02).set_label(f"best {data.metric}")
    ax.set_title(f"Parallel coordinates: hyperparameters and best {data.metric} of {len(trials)} trials")
    save(fig, out_dir, "parallel_coordinates")


def learning_curves(data: SweepData, out_dir: Path) -> list[Figure]:
    second = "val_loss" if data.metric != "val_loss" else "val_f1_macro"

    def rank(trial: TrialRecord):
        value = best_value(trial, data.metric, data.mode)
        return (value is None, 0.0 if value is None else (-value if data.mode == "max" else value))

    ranked = sorted(data.trials, key=rank)
    labelled = {t.trial_id for t in ranked[:LABELLED_TRIALS]}
    promoted_id = (data.promoted or {}).get("trial_id")
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for rank, trial in enumerate(ranked):
        history = trial.history
        x = history["epoch"] if "epoch" in history else history["training_iteration"]
        is_labelled = trial.trial_id in labelled
        style = dict(color=colors(rank % 10) if is_labelled else "0.75", lw=2.6 if trial.trial_id == promoted_id else 1.4,
                     zorder=3 if is_labelled else 1, marker="o", ms=3.5)
        best = best_value(trial, data.metric, data.mode)
        label = f"{trial.trial_id}  best {best:.3f}" if is_labelled and best is not None else None
        if label and trial.trial_id == promoted_id:
            label += " (promoted)"
        if label and trial.status == "early_stopped":
            label += " (stopped early)"
        for ax, column in zip(axes, (data.metric, second)):
            if column not in history:
                continue
            ax.plot(x, history[column], label=label if ax is axes[0] else None, **style)
            if trial.status == "early_stopped":
                ax.plot(x.iloc[-1], history[column].iloc[-1], marker="x", ms=9, mew=2, color=style["color"], zorder=4)
    for ax, column in zip(axes, (data.metric, second)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{data.metric} at each evaluation")
    axes[1].set_title(f"{second} at each evaluation")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="Trial", fontsize=9)
    stopped = sum(t.status == "early_stopped" for t in data.trials)
    fig.suptitle(f"Learning curves of {len(data.trials)} trials" + (f" ({stopped} stopped early by ASHA: x)" if stopped else ""),
                 fontsize=13)
    fig.tight_layout()
    save(fig, out_dir, "learning_curves")
    extra = f" Only the best {LABELLED_TRIALS} are named; the others are grey." if len(data.trials) > LABELLED_TRIALS else ""
    return [Figure("learning_curves", "Learning curves",
                   f"Validation {data.metric} and {second} at every evaluation of every trial; the promoted trial "
                   f"is drawn thicker.{extra}")]


# --- promoted model plots ------------------------------------------------------------------------

def confusion_matrix_plot(labels, preds, names, out_dir: Path) -> Figure:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(6.0, 1.2 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ConfusionMatrixDisplay.from_predictions(labels, preds, labels=list(range(len(names))),
                                            display_labels=[wrap(n) for n in names], cmap="Blues", ax=ax,
                                            colorbar=True, values_format="d")
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    accuracy = float(np.mean(labels == preds))
    ax.set_title(f"Promoted model: test confusion matrix (n={len(labels)}, accuracy {accuracy:.3f})")
    save(fig, out_dir, "confusion_matrix")
    return Figure("confusion_matrix", "Confusion matrix",
                  "Test examples counted by true label (rows) and the promoted model's prediction (columns).")


def roc_plot(labels, probs, names, out_dir: Path) -> Figure | None:
    from sklearn.metrics import RocCurveDisplay

    present = [k for k in range(len(names)) if 0 < np.sum(labels == k) < len(labels)]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    classes = [1] if len(names) == 2 else present  # binary: one curve, for the positive class
    colors = plt.get_cmap("tab10")
    for i, k in enumerate(classes):
        RocCurveDisplay.from_predictions(labels == k, probs[:, k], name=names[k], ax=ax, curve_kwargs={"color": colors(i % 10)},
                                         plot_chance_level=i == len(classes) - 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("Promoted model: test ROC curves" + (" (one class vs the rest)" if len(names) > 2 else ""))
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    save(fig, out_dir, "roc_curves")
    return Figure("roc_curves", "ROC curves", "One-vs-rest ROC curve and AUC of each class on the test split.")


def calibration_plot(labels, probs, out_dir: Path) -> tuple[Figure, float]:
    """Reliability diagram of the top-class confidence: is the model right 80% of the time when it
    says 0.8? Drawn from the bins the ECE in metrics.json is computed over (metrics.reliability), so
    the ECE it shows is that number; returns the figure and that ECE."""
    bins = reliability(labels, probs)
    n_bins = len(bins["count"])
    filled = bins["count"] > 0
    mean_conf = bins["confidence"][filled] / bins["count"][filled]
    accuracy = bins["correct"][filled] / bins["count"][filled]
    ece = expected_calibration_error(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="0.5", label="Perfectly calibrated")
    top.plot(mean_conf, accuracy, marker="o", color="tab:blue", label=f"Promoted model (ECE {ece:.3f})")
    top.set_ylabel("Accuracy in bin")
    top.set_ylim(0, 1)
    top.set_title(f"Promoted model: reliability diagram (test, {n_bins} bins)")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(edges[:-1], bins["count"], width=1.0 / n_bins, align="edge", color="tab:blue", alpha=0.6, edgecolor="white")
    bottom.set_xlabel("Confidence (probability of the predicted class)")
    bottom.set_ylabel("Examples")
    bottom.set_xlim(0, 1)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out_dir, "calibration")
    figure = Figure("calibration", "Reliability diagram",
                    f"Accuracy against confidence of the predicted class on the test split; expected calibration "
                    f"error {ece:.3f} ({n_bins} equal-width bins, as in metrics.json). The bars show how many "
                    f"predictions fall in each bin.")
    return figure, ece


def model_plots(data: SweepData, out_dir: Path) -> list[Figure]:
    if data.predictions is None:
        data.skipped["promoted model plots"] = "no promoted/test_predictions.npz (promotion off, or a model promoted by an older medsweep)"
        return []
    labels, probs, names = (data.predictions[k] for k in ("labels", "probs", "label_names"))
    figures = [confusion_matrix_plot(labels, probs.argmax(axis=1), names, out_dir)]
    roc = roc_plot(labels, probs, names, out_dir)
    if roc is None:
        data.skipped["roc_curves"] = "the test split holds a single class"
    else:
        figures.append(roc)
    figures.append(calibration_plot(labels, probs, out_dir)[0])
    return figures


def subgroup_plots(data: SweepData, out_dir: Path) -> list[Figure]:
    """One bar chart per group column: test accuracy and macro-F1 per group, with their bootstrap CIs."""
    subgroups = (data.promoted or {}).get("subgroups")
    if not subgroups:
        return []
    figures = []
    for index, (column, entry) in enumerate(subgroups["columns"].items()):
        groups = list(entry["groups"])
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2.5), 4))
        x = np.arange(len(groups))
        for offset, metric in zip((-0.2, 0.2), subgroups["metrics"]):
            values = np.array([entry["groups"][g][metric] for g in groups])
            low, high = (np.array([entry["groups"][g]["ci"][metric][i] for g in groups]) for i in (0, 1))
            ax.bar(x + offset, values, width=0.4, label=metric,
                   yerr=np.clip([values - low, high - values], 0, None), capsize=3)
        ax.set_xticks(x, [f"{wrap(g)}\n(n={entry['groups'][g]['n']})" for g in groups])
        ax.set_ylim(0, 1)
        ax.set_ylabel("Test score")
        ax.legend(loc="lower right")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"Promoted model: test metrics by {column}")
        fig.tight_layout()
        name = f"subgroups_{index}"
        save(fig, out_dir, name)
        gap = entry.get("largest_gap")
        caption = (f"Largest gap: {gap['metric']} {gap['difference']:.3f} between {gap['groups'][0]} and "
                   f"{gap['groups'][1]}{' (CIs overlap)' if gap['cis_overlap'] else ''}." if gap else "No gap computed.")
        figures.append(Figure(name, f"Subgroups: {column}",
                              f"Test accuracy and macro-F1 per {column} group, 95% bootstrap CIs. {caption}"))
    return figures


# --- the page ------------------------------------------------------------------------------------

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
LEADERBOARD_METRICS = ("f1_macro", "auroc", "accuracy")
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
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def write_report(run_dir: str | Path, config: dict | None = None) -> Path:
    """Write `<run dir>/report/` (PNGs + index.html); returns the report folder."""
    data = load(run_dir, config)
    out_dir = Path(run_dir) / REPORT_DIR
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
    print(f"[medsweep] report: {out_dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
