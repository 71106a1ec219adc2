"""Evaluate a trained model on a held-out split: metrics with bootstrap CIs, plots and a report."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel

from cxr import CLASSES
from cxr.caching import ContentKey, sha256_text, stable_json
from cxr.errors import DataError, ModelError
from cxr.registry import load_model_with_metadata, resolve_model, sha256_file
from cxr.state import state_dir

if TYPE_CHECKING:
    from tasks.batches import BatchesResult

# Metrics with a bootstrap interval (pr_auc omitted: average precision is costly to vectorise).
CI_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "auc")
PLOT_DPI = 80


class EvaluationResult(BaseModel):
    """Test-split metrics of one model, their 95 % CIs and where the plots and report were written."""

    metrics: dict[str, Any]
    ci: dict[str, list[float] | None]
    plots: dict[str, Path]
    report_path: Path
    split: str
    n: int
    model_sha256: str

    def is_intact(self) -> bool:
        """Whether the report and plots this result points at are still there."""
        return all(Path(path).is_file() for path in [self.report_path, *self.plots.values()])


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (metric undefined)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _threshold_metrics(tp, fn, fp, tn) -> dict[str, np.ndarray]:  # noqa: ANN001 - counts, scalar or per-resample
    """Metrics from confusion counts; works on scalars and on arrays of bootstrap resamples alike."""
    sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fn + fp + tn),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _as_json_number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _check_inputs(is_pneumonia: np.ndarray, prob_pneumonia: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_pneumonia).astype(bool).ravel()
    p = np.asarray(prob_pneumonia, dtype=float).ravel()
    if y.size == 0 or y.shape != p.shape:
        raise DataError(f"need equal, non-empty label and probability arrays, got {y.shape} and {p.shape}")
    return y, p


def _outcomes(y: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of true/false positives/negatives, pneumonia being the positive class."""
    return {"tp": y & predicted, "fn": y & ~predicted, "fp": ~y & predicted, "tn": ~y & ~predicted}


def classification_metrics(is_pneumonia: np.ndarray, prob_pneumonia: np.ndarray, threshold: float) -> dict:
    """Metrics for 'pneumonia' as the positive class, predicted when P(pneumonia) >= threshold.

    Undefined values (AUC with one class present, a ratio with an empty denominator) are None.
    `confusion` rows are the true class and columns the predicted class, both in CLASSES order.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # imported here: cached runs skip it

    y, p = _check_inputs(is_pneumonia, prob_pneumonia)
    counts = {name: int(mask.sum()) for name, mask in _outcomes(y, p >= threshold).items()}
    metrics: dict[str, Any] = {k: _as_json_number(v) for k, v in _threshold_metrics(**counts).items()}
    both_classes = 0 < y.sum() < y.size
    metrics["auc"] = float(roc_auc_score(y, p)) if both_classes else None
    metrics["pr_auc"] = float(average_precision_score(y, p)) if both_classes else None
    confusion = [[counts["tp"], counts["fn"]], [counts["fp"], counts["tn"]]]
    metrics.update(threshold=float(threshold), n=int(y.size), confusion=confusion)
    return metrics


def _weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of resample weights (counts), by the Mann-Whitney statistic with tied ranks.

    AUC = sum over positives i of w_i * (negative weight below p_i + half the negative weight tied
    with p_i), over W_pos * W_neg. One sort serves all resamples: O(B * N).
    """
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted, w_sorted = p[order], y[order], weights[:, order]
    negative_weight = np.where(y_sorted, 0.0, w_sorted)
    cumulative = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(negative_weight, axis=1)], axis=1)
    tie_start = np.searchsorted(p_sorted, p_sorted, side="left")
    tie_end = np.searchsorted(p_sorted, p_sorted, side="right")
    below = cumulative[:, tie_start]
    tied = cumulative[:, tie_end] - below
    positive_weight = np.where(y_sorted, w_sorted, 0.0)
    wins = np.sum(positive_weight * (below + 0.5 * tied), axis=1)
    return _ratio(wins, positive_weight.sum(axis=1) * negative_weight.sum(axis=1))


def bootstrap_ci(
    is_pneumonia: np.ndarray,
    prob_pneumonia: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """95 % percentile bootstrap intervals of CI_METRICS; None where a metric is never defined."""
    y, p = _check_inputs(is_pneumonia, prob_pneumonia)
    n = y.size
    rng = np.random.default_rng(seed)
    # Row b holds how often each image was drawn in resample b (multinomial counts).
    draws = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n
    weights = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
    counts = {name: weights @ mask.astype(float) for name, mask in _outcomes(y, p >= threshold).items()}
    samples = _threshold_metrics(**counts)
    samples["auc"] = _weighted_auc(y, p, weights)
    intervals: dict[str, list[float] | None] = {}
    for name in CI_METRICS:
        values = samples[name][~np.isnan(samples[name])]
        intervals[name] = np.percentile(values, [2.5, 97.5]).tolist() if values.size else None
    return intervals


def predict_pneumonia_proba(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:  # noqa: ANN001
    """P(pneumonia) per image: the model's first softmax output on raw 0..255 float32 pixels."""
    if images.ndim != 4 or images.shape[-1] != 1:
        raise DataError(f"expected greyscale images (N, S, S, 1), got shape {images.shape}")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and expected != images.shape[1:3]:
        import tensorflow as tf

        # A model trained at another size (e.g. the champion) still scores the same images.
        images = tf.image.resize(images.astype(np.float32), expected).numpy()
    output = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(output[:, 0], dtype=float)


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
    y, p = _check_inputs(is_pneumonia, prob)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "confusion-matrix": plot_confusion_matrix(metrics["confusion"], out_dir / "confusion-matrix.png"),
        "roc-curve": _curve_plot(y, p, out_dir / "roc-curve.png", roc=True, score=metrics["auc"]),
        "pr-curve": _curve_plot(y, p, out_dir / "pr-curve.png", roc=False, score=metrics["pr_auc"]),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def metric_rows(metrics: dict, ci: dict) -> list[dict[str, str]]:
    """(metric, value, 95 % CI) rows of every scalar metric, for tables and reports."""
    rows = []
    for name in (*CI_METRICS, "pr_auc"):
        interval = ci.get(name)
        ci_text = f"{interval[0]:.4f} – {interval[1]:.4f}" if interval else "n/a"
        rows.append({"metric": name, "value": _fmt(metrics[name]), "95 % CI": ci_text})
    return rows


def confusion_markdown(confusion: list[list[int]]) -> str:
    header = "| true \\ predicted | " + " | ".join(CLASSES) + " |\n|---|---|---|\n"
    return header + "\n".join(
        f"| {name} | {row[0]} | {row[1]} |" for name, row in zip(CLASSES, confusion, strict=True)
    )


def report_markdown(result: EvaluationResult, image_links: dict[str, str]) -> str:
    """The evaluation report; `image_links` maps plot names to a relative path or a data: URI."""
    table = "| metric | value | 95 % CI |\n|---|---|---|\n" + "\n".join(
        f"| {row['metric']} | {row['value']} | {row['95 % CI']} |"
        for row in metric_rows(result.metrics, result.ci)
    )
    images = "\n\n".join(f"![{name}]({link})" for name, link in image_links.items())
    return (
        f"# Evaluation on the {result.split} split\n\n"
        f"Model sha256 `{result.model_sha256[:16]}`, {result.n} images, "
        f"threshold P(pneumonia) >= {result.metrics['threshold']:.4f}.\n\n"
        f"{table}\n\n## Confusion matrix\n\n{confusion_markdown(result.metrics['confusion'])}\n\n{images}\n"
    )


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def evaluate_predictions(
    is_pneumonia: np.ndarray,
    prob_pneumonia: np.ndarray,
    *,
    threshold: float,
    split: str,
    model_sha256: str,
    out_dir: Path,
) -> EvaluationResult:
    """Metrics, CIs, plots and a markdown report (`report.md`) for predictions already made."""
    metrics = classification_metrics(is_pneumonia, prob_pneumonia, threshold)
    ci = bootstrap_ci(is_pneumonia, prob_pneumonia, threshold)
    plots = write_plots(is_pneumonia, prob_pneumonia, metrics, out_dir)
    result = EvaluationResult(
        metrics=metrics,
        ci=ci,
        plots=plots,
        report_path=out_dir / "report.md",
        split=split,
        n=metrics["n"],
        model_sha256=model_sha256,
    )
    result.report_path.write_text(report_markdown(result, {name: path.name for name, path in plots.items()}))
    return result


def _load_split(batches: BatchesResult, split: str) -> tuple[np.ndarray, np.ndarray]:
    from tasks.batches import load_split  # imported here so the metrics above stay usable without TF data

    return load_split(batches, split)


def evaluate_model(
    model_path: Path,
    batches: BatchesResult,
    *,
    split: str = "test",
    out_dir: Path,
    threshold: float | None = None,
) -> EvaluationResult:
    """Score `split` of `batches` with the model; threshold defaults to the one in its model.json."""
    path = resolve_model(model_path)
    model, metadata = load_model_with_metadata(path)
    if threshold is None:
        threshold = float(metadata["threshold"])
    images, labels = _load_split(batches, split)
    prob = predict_pneumonia_proba(model, images)
    return evaluate_predictions(
        labels == CLASSES.index("pneumonia"),
        prob,
        threshold=threshold,
        split=split,
        model_sha256=sha256_file(path),
        out_dir=out_dir,
    )


def score_model(uri_or_path: str | Path, images: np.ndarray, labels: np.ndarray, tracking_uri: str) -> dict:
    """classification_metrics of a (registered) model on labelled images, at the model's own threshold."""
    model, metadata = load_model_with_metadata(uri_or_path, tracking_uri)
    prob = predict_pneumonia_proba(model, images)
    return classification_metrics(labels == CLASSES.index("pneumonia"), prob, float(metadata["threshold"]))


def champion_scorer_for(
    batches: BatchesResult, tracking_uri: str, split: str = "test"
) -> Callable[[str], dict]:
    """A function that scores a registered model (by URI) on `split` of `batches`."""
    return lambda model_uri: score_model(model_uri, *_load_split(batches, split), tracking_uri)


def publish_evaluation(result: EvaluationResult) -> None:
    """Prefect artifacts: the metrics table, the report with embedded plots, and one image per plot."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

    create_table_artifact(
        key="metrics",
        table=metric_rows(result.metrics, result.ci),
        description=f"{result.split} split metrics",
    )
    uris = {name: png_data_uri(path) for name, path in result.plots.items()}
    create_markdown_artifact(key="evaluation-report", markdown=report_markdown(result, uris))
    # The Prefect UI renders data: URIs in image artifacts, so plots need no web server.
    for name, uri in uris.items():
        create_image_artifact(image_url=uri, key=name, description=f"{name} ({result.split} split)")


@task(
    name="evaluate",
    cache_policy=ContentKey(modules=("cxr.registry",)),
    persist_result=True,
    retries=1,
)
def evaluate(model_path: str, model_sha256: str, batches: BatchesResult) -> EvaluationResult:
    """Evaluate the trained model on the test split (the `report` task publishes the results)."""
    key = sha256_text(stable_json({"model": model_sha256, "batches": batches.digest, "split": "test"}))[:16]
    result = evaluate_model(Path(model_path), batches, out_dir=state_dir("reports", key))
    if result.model_sha256 != model_sha256:
        raise ModelError(f"{model_path} changed since training (sha256 {result.model_sha256[:12]})")
    metrics = result.metrics
    get_run_logger().info(
        "test AUC %s, sensitivity %s, specificity %s on %d images",
        _fmt(metrics["auc"]),
        _fmt(metrics["sensitivity"]),
        _fmt(metrics["specificity"]),
        result.n,
    )
    return result
