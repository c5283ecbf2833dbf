"""The sweep's plots: optimization history, hyperparameter importances and parallel coordinates
(Optuna's own plots and evaluator, on a study rebuilt from Ray's results), and the learning curves of
every trial. Each plot of the primary objective (plan.primary), over every trial of the run.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator
from optuna.importance import BaseImportanceEvaluator

from medsweep.reporting.figures import Figure, plt, save
from medsweep.reporting.run_data import SweepData, TrialRecord, short_names

# Learning curves name this many of the best trials in the legend; the rest are drawn in grey.
LABELLED_TRIALS = 10


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
    study = optuna.create_study(direction=data.objective.direction)
    for trial in data.trials:
        value = trial.best_value(data.objective)
        if value is None or not math.isfinite(value):
            continue
        params = {names[path]: trial.params[path] for path in data.param_specs if path in trial.params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=value,
            user_attrs={"trial_id": trial.trial_id}))
    return study


def _direction(data: SweepData) -> str:
    return "higher" if data.mode == "max" else "lower"


def optimization_history(study, data: SweepData, out_dir: Path) -> Figure:
    from optuna.visualization import matplotlib as optuna_mpl

    ax = optuna_mpl.plot_optimization_history(study, target_name=data.metric)
    ax.set_title(f"Optimization history: best {data.metric} per trial ({_direction(data)} is better)")
    ax.set_xlabel("Trial number (in start order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(ax.figure, out_dir, "optimization_history")
    return Figure("optimization_history", "Optimization history",
                  f"Each trial's best {data.metric} and the best so far, in the order trials started.")


class Computed(BaseImportanceEvaluator):
    """An importance evaluator that hands back importances computed already (Optuna's plot takes an
    evaluator, not the values)."""

    def __init__(self, importances: dict[str, float]):
        self.importances = importances

    def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
        return dict(self.importances)


def param_importances(study, data: SweepData, out_dir: Path) -> Figure:
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.visualization import matplotlib as optuna_mpl

    n = len(study.trials)
    # Computed once, for the caption and the plot (so they agree): fANOVA's forest is most of the
    # report's time at 1,000 trials, and the plot would fit it a second time.
    importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    ax = optuna_mpl.plot_param_importances(study, evaluator=Computed(importances), target_name=data.metric)
    ax.set_title("", loc="left")  # Optuna's own title, which would overlap ours
    ax.set_title(f"Hyperparameter importances for {data.metric} (fANOVA, {n} trials)")
    save(ax.figure, out_dir, "param_importances")
    caveat = " With few trials this is indicative only." if n < 10 else ""
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(importances.items())[:3])
    return Figure("param_importances", "Hyperparameter importances",
                  f"Share of the variance of {data.metric} explained by each hyperparameter "
                  f"(Optuna's fANOVA evaluator): {top}.{caveat}")


def sweep_plots(data: SweepData, out_dir: Path) -> list[Figure]:
    from optuna.exceptions import ExperimentalWarning

    study = build_study(data)
    n = len(study.trials)
    searched = n >= 2 and bool(study.best_trial.params)
    figures = []
    # Optuna switches the global style to ggplot on every call; keep that inside these plots.
    with plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if n >= 1:
            figures.append(optimization_history(study, data, out_dir))
        values = [t.value for t in study.trials]
        if searched and max(values) == min(values):
            data.skipped["param_importances"] = f"all {n} trials scored the same {data.metric}: nothing to attribute"
        elif searched:
            figures.append(param_importances(study, data, out_dir))
        else:
            data.skipped["param_importances"] = "needs at least 2 trials with a result and a search space"
    if searched:
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
        value = trial.best_value(data.objective)
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
        best = trial.best_value(data.objective)
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
