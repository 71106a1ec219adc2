"""Evaluate a trained model on a held-out split: metrics with bootstrap CIs, plots, a report and its artifacts."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from cxr import CLASSES, NORMAL, PNEUMONIA
from cxr.config.params import ReferralTargets
from cxr.core.atomic_files import sha256_file, write_atomically
from cxr.core.errors import DataError
from cxr.data.batches import BatchesResult
from cxr.data.shards import read_labels
from cxr.data.split_images import resized, split_image_chunks, split_paths
from cxr.evaluation.metrics import CI_METRICS, bootstrap_ci, classification_metrics
from cxr.evaluation.plots import write_plots
from cxr.evaluation.risk_coverage import referral_markdown, referral_summary
from cxr.evaluation.scoring import PROBABILITY_COLUMNS, ImageScorer, Scores
from cxr.model.loading import load_model_with_metadata, resolve_model
from cxr.model.operating_points import operating_points, threshold_in_force
from cxr.model.referral import ReferralBand, decision_counts, referral_band
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
    # Images per `decision` (cxr.model.referral) at that point, and the per-image table (path, truth, decision...).
    decisions: dict[str, int] = {}
    predictions_path: Path | None = None
    # Coverage and the rates on the images answered alone, and the risk–coverage curve (`risk_coverage`).
    referral: dict[str, Any] = {}

    def is_intact(self) -> bool:
        """Whether the report, plots and predictions this result points at are still there."""
        written = [self.report_path, *self.plots.values(), *filter(None, [self.predictions_path])]
        return all(Path(path).is_file() for path in written)


def _pneumonia_labels(labels: np.ndarray) -> np.ndarray:
    """Is-pneumonia per image from the int labels shards store (CLASSES order)."""
    return np.asarray(labels) == CLASSES.index(PNEUMONIA)


def score_images(
    model,  # noqa: ANN001 - a keras.Model
    metadata: dict[str, Any],
    images: np.ndarray,
    threshold: float | None = None,
) -> Scores:
    """`ImageScorer` scores of raw 0..255 grey images (N, S, S, 1) at the threshold in force (else `threshold`);
    images of another size are resized as serving resizes an array (Pillow, bilinear)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise DataError(f"expected greyscale images (N, S, S, 1), got shape {images.shape}")
    scorer = ImageScorer(model, metadata)
    if images.shape[1:3] != (scorer.image_size, scorer.image_size):
        images = resized(np.clip(images, 0, 255), scorer.image_size)
    return scorer.score(images, scorer.operating_point(threshold=threshold)[1])


def score_split(
    model,  # noqa: ANN001 - a keras.Model
    metadata: dict[str, Any],
    batches: BatchesResult,
    split: str,
    threshold: float,
) -> tuple[Scores, np.ndarray]:
    """(scores at `threshold`, is-pneumonia) per image of `split`, in shard order, each image decoded for the
    model's own size as serving decodes it (`cxr.data.split_images`)."""
    scorer = ImageScorer(model, metadata)
    chunks = split_image_chunks(batches, split, scorer.image_size)
    scores = Scores.concat([scorer.score(images, threshold) for images in chunks])
    return scores, _pneumonia_labels(read_labels(batches.shards(split)))


def predict_split(
    model,  # noqa: ANN001 - a keras.Model
    batches: BatchesResult,
    split: str,
    metadata: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(pneumonia), is-pneumonia) per image of `split`, as `score_split` scores them (`metadata`: the model's;
    None for a bare network of the project's classes)."""
    metadata = metadata or {"image_size": model.input_shape[1]}
    scores, is_pneumonia = score_split(model, metadata, batches, split, threshold=0.5)
    return scores.p_pneumonia, is_pneumonia


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
        f"{table}\n\n{decisions_markdown(result)}{operating_points_markdown(result)}{referral_section(result)}## Confusion matrix\n\n{confusion_markdown(result.metrics['confusion'])}\n\n{images}\n"
    )


def decisions_markdown(result: EvaluationResult) -> str:
    """Images per decision: what a reader of `decision` alone receives."""
    if not result.decisions:
        return ""
    counts = ", ".join(f"{name} {count}" for name, count in result.decisions.items())
    return f"## Decisions\n\nImages per `decision` (pneumonia/normal: answered alone): {counts}.\n\n"


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
    predictions: pd.DataFrame | None = None,
    band: ReferralBand | None = None,
    targets: ReferralTargets | None = None,
) -> EvaluationResult:
    """Metrics, CIs, plots and a markdown report (`report.md`) for predictions already made.

    `metrics` are at `threshold` (operating point `operating_point`); `point_thresholds` adds the
    rates at every other named point of the model; `predictions` (one row per image with its `decision`) is
    written to `predictions.csv` and counted per decision; `band` (the model's referral band) and `targets` give
    the coverage and the rates on the images answered alone beside them.
    """
    metrics = classification_metrics(is_pneumonia, prob_pneumonia, threshold)
    metrics["operating_point"] = operating_point
    ci = bootstrap_ci(is_pneumonia, prob_pneumonia, threshold)
    referral = referral_summary(
        is_pneumonia, prob_pneumonia, threshold, band, targets or ReferralTargets(), _in_domain(predictions)
    )
    metrics |= referral["metrics"]
    ci |= referral["ci"]
    plots = write_plots(is_pneumonia, prob_pneumonia, metrics, out_dir)
    predictions_path = None
    if predictions is not None:
        predictions_path = write_atomically(
            out_dir / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False)
        )
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
        decisions=decision_counts(list(predictions["decision"])) if predictions is not None else {},
        predictions_path=predictions_path,
        referral={key: referral[key] for key in ("answered", "curve")},
    )
    result.report_path.write_text(report_markdown(result, {name: path.name for name, path in plots.items()}))
    return result


def _in_domain(predictions: pd.DataFrame | None) -> np.ndarray | None:
    """The domain verdict per image (None for a model without a domain score): what `decision` read."""
    if predictions is None or predictions["in_domain"].isna().all():
        return None
    return predictions["in_domain"].fillna(True).astype(bool).to_numpy()


def predictions_table(scores: Scores, is_pneumonia: np.ndarray, paths: list[str] | None) -> pd.DataFrame:
    """One row per image: its file (when known), true class, both probability names, label, decision, domain."""
    truth = np.where(is_pneumonia, PNEUMONIA, NORMAL)
    frame = pd.DataFrame(scores.rows())
    frame.insert(0, "true_label", truth)
    frame.insert(0, "path", paths if paths is not None else None)
    return frame[
        ["path", "true_label", "label", "decision", *PROBABILITY_COLUMNS, "in_domain", "domain_score"]
    ]


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
    default), or at an explicit `threshold` when one is given; each image's decision in `predictions.csv`."""
    path = resolve_model(model_path)
    model, metadata = load_model_with_metadata(path)
    name, point_threshold = ImageScorer(model, metadata).operating_point(operating_point, threshold)
    scores, is_pneumonia = score_split(model, metadata, batches, split, point_threshold)
    return evaluate_predictions(
        is_pneumonia,
        scores.p_pneumonia,
        threshold=point_threshold,
        split=split,
        model_sha256=sha256_file(path),
        out_dir=out_dir,
        operating_point=name,
        point_thresholds={
            key: float(point["threshold"]) for key, point in operating_points(metadata)[0].items()
        },
        predictions=predictions_table(scores, is_pneumonia, split_paths(batches, split)),
        band=referral_band(metadata),
        targets=targets_of(metadata.get("referral")),
    )


def score_model(uri_or_path: str | Path, images: np.ndarray, labels: np.ndarray, tracking_uri: str) -> dict:
    """classification_metrics of a (registered) model on labelled images, at its threshold in force."""
    model, metadata = load_model_with_metadata(uri_or_path, tracking_uri)
    scores = score_images(model, metadata, images)
    return classification_metrics(_pneumonia_labels(labels), scores.p_pneumonia, threshold_in_force(metadata))


def champion_scorer_for(
    batches: BatchesResult, tracking_uri: str, split: str = "test"
) -> Callable[[str], dict]:
    """A function that scores a registered model (by URI) on `split` of `batches` at its threshold in force,
    each image decoded for the model's own size as serving decodes it."""

    def score(model_uri: str) -> dict:
        model, metadata = load_model_with_metadata(model_uri, tracking_uri)
        threshold = threshold_in_force(metadata)
        scores, is_pneumonia = score_split(model, metadata, batches, split, threshold)
        return classification_metrics(is_pneumonia, scores.p_pneumonia, threshold)

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
