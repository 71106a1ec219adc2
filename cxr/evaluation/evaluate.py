"""Evaluate a trained model on a held-out split: metrics with bootstrap CIs, plots, a report and its artifacts."""

from __future__ import annotations

import base64
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from cxr import CLASSES
from cxr.config.params import ReferralTargets
from cxr.core.atomic_files import sha256_file
from cxr.core.errors import DataError
from cxr.data.batches import BatchesResult
from cxr.data.shards import read_labels
from cxr.evaluation.metrics import CI_METRICS, bootstrap_ci, classification_metrics
from cxr.evaluation.plots import write_plots
from cxr.evaluation.risk_coverage import referral_markdown, referral_summary
from cxr.model.loading import load_model_with_metadata, resolve_model
from cxr.model.referral import ReferralBand, referral_band
from cxr.model.referral_fit import targets_of


class EvaluationResult(BaseModel):
    """Test-split metrics of one model, their 95 % CIs and where the plots and report were written."""

    metrics: dict[str, Any]
    ci: dict[str, list[float] | None]
    plots: dict[str, Path]
    report_path: Path
    split: str
    n: int
    model_sha256: str
    # The operating point `metrics` use, and accuracy/sensitivity/specificity at each of the model's points.
    operating_point: str = "default"
    operating_points: dict[str, dict[str, Any]] = {}
    # Coverage and the rates on the images answered alone, and the risk–coverage curve (`risk_coverage`).
    referral: dict[str, Any] = {}

    def is_intact(self) -> bool:
        """Whether the report and plots this result points at are still there."""
        return all(Path(path).is_file() for path in [self.report_path, *self.plots.values()])


# One traced forward pass per live model, shared by every call: building and tracing one costs
# about as much as scoring a few hundred images on a CPU.
_FORWARD_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward_pass(model):  # noqa: ANN001, ANN202 - a keras.Model; a tf.function
    """`model(batch, training=False)` as one graph traced for any batch size.

    Unlike `model.predict`, a call builds no tf.data pipeline or iterator, and a shorter last batch
    does not retrace the graph; on small chunks of files that set-up cost as much as the arithmetic.
    """
    import tensorflow as tf

    forward = _FORWARD_PASSES.get(model)
    if forward is None:
        network = weakref.ref(model)  # the cache must not keep the model alive
        forward = tf.function(
            lambda batch: network()(batch, training=False),
            input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)],
            autograph=False,
        )
        _FORWARD_PASSES[model] = forward
    return forward


def predict_pneumonia_proba(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:  # noqa: ANN001
    """P(pneumonia) per image: the model's first softmax output on raw 0..255 float32 pixels."""
    import tensorflow as tf

    if images.ndim != 4 or images.shape[-1] != 1:
        raise DataError(f"expected greyscale images (N, S, S, 1), got shape {images.shape}")
    images = images.astype(np.float32)
    expected = tuple(model.input_shape[1:3])
    if None not in expected and expected != images.shape[1:3]:
        # A model trained at another size (e.g. the champion) still scores the same images.
        images = tf.image.resize(images, expected).numpy()
    forward = _forward_pass(model)
    outputs = [
        forward(tf.constant(images[start : start + batch_size])).numpy()[:, 0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).astype(float) if outputs else np.empty(0)


def predict_split(
    model, batches: BatchesResult, split: str, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(P(pneumonia), is-pneumonia) per image of `split`, streamed from its shards in order."""
    from cxr.data.datasets import split_dataset

    expected = model.input_shape[1]
    images = split_dataset(
        batches, split, batch_size=batch_size, shuffle=False, seed=0, one_hot=False, image_size=expected
    ).map(lambda batch_images, _: batch_images)
    labels = read_labels(batches.shards(split))
    output = model.predict(images, verbose=0) if len(labels) else np.empty((0, len(CLASSES)))
    return np.asarray(output[:, 0], dtype=float), labels == CLASSES.index("pneumonia")


def format_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def metric_rows(metrics: dict, ci: dict) -> list[dict[str, str]]:
    """(metric, value, 95 % CI) rows of every scalar metric, for tables and reports."""
    rows = []
    for name in (*CI_METRICS, "pr_auc"):
        interval = ci.get(name)
        ci_text = f"{interval[0]:.4f} – {interval[1]:.4f}" if interval else "n/a"
        rows.append({"metric": name, "value": format_metric(metrics[name]), "95 % CI": ci_text})
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
        f"operating point `{result.operating_point}`: threshold P(pneumonia) >= {result.metrics['threshold']:.4f}.\n\n"
        f"{table}\n\n{operating_points_markdown(result)}{referral_section(result)}## Confusion matrix\n\n{confusion_markdown(result.metrics['confusion'])}\n\n{images}\n"
    )


def operating_points_markdown(result: EvaluationResult) -> str:
    """Accuracy, sensitivity and specificity on this data at every operating point of the model."""
    if not result.operating_points:
        return ""
    rows = "\n".join(
        f"| {name}{' (used)' if name == result.operating_point else ''} | {point['threshold']:.4f} | "
        f"{format_metric(point['accuracy'])} | {format_metric(point['sensitivity'])} | "
        f"{format_metric(point['specificity'])} |"
        for name, point in result.operating_points.items()
    )
    return (
        "## Operating points\n\n| operating point | threshold | accuracy | sensitivity | specificity |\n"
        f"|---|---|---|---|---|\n{rows}\n\n"
    )


def referral_section(result: EvaluationResult) -> str:
    if not result.referral:
        return ""
    return referral_markdown(result.referral["answered"], result.referral["curve"]) + "\n"


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
    operating_point: str = "default",
    point_thresholds: dict[str, float] | None = None,
    band: ReferralBand | None = None,
    targets: ReferralTargets | None = None,
) -> EvaluationResult:
    """Metrics, CIs, plots and a markdown report (`report.md`) for predictions already made.

    `metrics` are at `threshold` (operating point `operating_point`); `point_thresholds` adds the
    rates at every other named point of the model; `band` (the model's referral band) and `targets` give the
    coverage and the rates on the images answered alone beside them.
    """
    metrics = classification_metrics(is_pneumonia, prob_pneumonia, threshold)
    metrics["operating_point"] = operating_point
    ci = bootstrap_ci(is_pneumonia, prob_pneumonia, threshold)
    referral = referral_summary(is_pneumonia, prob_pneumonia, threshold, band, targets or ReferralTargets())
    metrics |= referral["metrics"]
    ci |= referral["ci"]
    plots = write_plots(is_pneumonia, prob_pneumonia, metrics, out_dir)
    result = EvaluationResult(
        metrics=metrics,
        ci=ci,
        plots=plots,
        report_path=out_dir / "report.md",
        split=split,
        n=metrics["n"],
        model_sha256=model_sha256,
        operating_point=operating_point,
        operating_points={
            name: {
                key: value
                for key, value in classification_metrics(is_pneumonia, prob_pneumonia, point).items()
                if key in ("threshold", "accuracy", "sensitivity", "specificity")
            }
            for name, point in (point_thresholds or {}).items()
        },
        referral={key: referral[key] for key in ("answered", "curve")},
    )
    result.report_path.write_text(report_markdown(result, {name: path.name for name, path in plots.items()}))
    return result


def evaluate_model(
    model_path: Path,
    batches: BatchesResult,
    *,
    split: str = "test",
    out_dir: Path,
    threshold: float | None = None,
    operating_point: str | None = None,
) -> EvaluationResult:
    """Score `split` of `batches` with the model at its operating point `operating_point` (None: its
    default), or at an explicit `threshold` when one is given."""
    from cxr.model.operating_points import operating_points, select

    path = resolve_model(model_path)
    model, metadata = load_model_with_metadata(path)
    name, point_threshold = select(metadata, operating_point)
    if threshold is not None:
        name, point_threshold = "explicit-threshold", threshold
    prob, is_pneumonia = predict_split(model, batches, split)
    return evaluate_predictions(
        is_pneumonia,
        prob,
        threshold=point_threshold,
        split=split,
        model_sha256=sha256_file(path),
        out_dir=out_dir,
        operating_point=name,
        point_thresholds={
            key: float(point["threshold"]) for key, point in operating_points(metadata)[0].items()
        },
        band=referral_band(metadata),
        targets=targets_of(metadata.get("referral")),
    )


def score_model(uri_or_path: str | Path, images: np.ndarray, labels: np.ndarray, tracking_uri: str) -> dict:
    """classification_metrics of a (registered) model on labelled images, at the model's own threshold."""
    model, metadata = load_model_with_metadata(uri_or_path, tracking_uri)
    prob = predict_pneumonia_proba(model, images)
    return classification_metrics(labels == CLASSES.index("pneumonia"), prob, float(metadata["threshold"]))


def champion_scorer_for(
    batches: BatchesResult, tracking_uri: str, split: str = "test"
) -> Callable[[str], dict]:
    """A function that scores a registered model (by URI) on `split` of `batches`, streamed from its shards."""

    def score(model_uri: str) -> dict:
        model, metadata = load_model_with_metadata(model_uri, tracking_uri)
        prob, is_pneumonia = predict_split(model, batches, split)
        return classification_metrics(is_pneumonia, prob, float(metadata["threshold"]))

    return score


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
    if result.referral:
        create_table_artifact(
            key="risk-coverage",
            table=result.referral["curve"],
            description=f"Answered share against the rates on the answered images ({result.split} split)",
        )
    # The Prefect UI renders data: URIs in image artifacts, so plots need no web server.
    for name, uri in uris.items():
        create_image_artifact(image_url=uri, key=name, description=f"{name} ({result.split} split)")
