"""The promoted model's plots, on the test split (from promoted/test_predictions.npz: labels and
probabilities, no text): confusion matrix, one-vs-rest ROC curves, reliability diagram, the
risk-coverage curve (from metrics.json when promotion wrote it: the served labels), and test metrics
per subgroup (from metrics.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsweep.evaluation.metrics import expected_calibration_error, reliability, risk_coverage
from medsweep.reporting.figures import Figure, plt, save, wrap
from medsweep.reporting.run_data import SweepData



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


def risk_coverage_plot(curve: dict, out_dir: Path) -> Figure:
    """Accuracy of the cases the model keeps against the share it refers (least confident first)."""
    shares, accuracy = np.array(curve["curve"]["referred_share"]), np.array(curve["curve"]["accuracy_kept"])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(shares, accuracy, color="tab:blue", label="Promoted model")
    ax.axhline(accuracy[0], ls="--", color="0.5", label=f"Referring none (accuracy {accuracy[0]:.3f})")
    for point in curve["at"][1:]:
        ax.plot(point["referred_share"], point["accuracy_kept"], "o", color="tab:blue")
    ax.set_xlabel("Share of cases referred to a clinician (least confident first)")
    ax.set_ylabel("Accuracy of the cases kept")
    ax.set_xlim(0, 1)
    ax.set_ylim(min(0.5, float(accuracy.min()) - 0.02), 1.005)
    ax.set_title(f"Promoted model: risk-coverage (test, n={curve['rows']})")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, out_dir, "risk_coverage")
    read = "; ".join(f"{p['referred_share']:.0%} referred: {p['accuracy_kept']:.3f}" for p in curve["at"])
    return Figure("risk_coverage", "Risk-coverage",
                  f"Accuracy of the test cases the model keeps when the least confident share (by the top-class "
                  f"probability) is referred, labels from the {curve.get('labels', 'argmax')}. {read}.")


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
    # A model promoted before metrics.json carried the curve: drawn from the saved probabilities (argmax).
    curve = (data.promoted or {}).get("risk_coverage") or risk_coverage(labels, probs)
    figures.append(risk_coverage_plot(curve, out_dir))
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
