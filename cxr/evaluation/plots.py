"""Evaluation plots (confusion matrix, ROC and precision-recall curves) as small PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr import CLASSES
from cxr.evaluation.metrics import check_inputs

PLOT_DPI = 80


def _figure():  # noqa: ANN202 - (Figure, Axes); matplotlib is imported lazily
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4, 4), dpi=PLOT_DPI)


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def plot_confusion_matrix(confusion: list[list[int]], path: Path) -> Path:
    fig, ax = _figure()
    matrix = np.asarray(confusion)
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=14)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASSES, yticklabels=CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, path)


def _curve_plot(y: np.ndarray, p: np.ndarray, path: Path, *, roc: bool, score: float | None) -> Path:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, ax = _figure()
    if score is None:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    elif roc:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC {score:.3f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    else:
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"AP {score:.3f}")
        ax.axhline(y.mean(), linestyle="--", color="grey")
    x_label, y_label, title = ("FPR", "TPR", "ROC") if roc else ("recall", "precision", "Precision-recall")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=x_label, ylabel=y_label, title=f"{title} (pneumonia)")
    if score is not None:
        ax.legend(loc="lower right" if roc else "lower left")
    return _save(fig, path)


def write_plots(is_pneumonia: np.ndarray, prob: np.ndarray, metrics: dict, out_dir: Path) -> dict[str, Path]:
    """Confusion matrix, ROC and PR curve PNGs in out_dir; keys are the plot names."""
    y, p = check_inputs(is_pneumonia, prob)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "confusion-matrix": plot_confusion_matrix(metrics["confusion"], out_dir / "confusion-matrix.png"),
        "roc-curve": _curve_plot(y, p, out_dir / "roc-curve.png", roc=True, score=metrics["auc"]),
        "pr-curve": _curve_plot(y, p, out_dir / "pr-curve.png", roc=False, score=metrics["pr_auc"]),
    }
