"""External validation: a labelled folder from another site, scored with the challenger and the champion.

A holdout cut from the training pool flatters; a folder acquired elsewhere does not. Each set goes through
`cxr evaluate`'s own steps (`cxr.evaluation.evaluate_folder.evaluate_folder`): its manifest and reports live in the state folder,
so the folder itself is only read, and ingest's content digest fingerprints it. A set sharing an image
with the run's train or validation split is refused: it would measure memory, not transfer.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from cxr import CLASSES
from cxr.core.artifacts import Artifact, WithArtifacts
from cxr.core.errors import DataError
from cxr.data.layouts import detect_layout, label_all
from cxr.data.scanning import scan_folder
from cxr.evaluation.evaluate import format_metric, png_data_uri
from cxr.evaluation.evaluate_folder import evaluate_folder
from cxr.evaluation.metrics import CI_METRICS
from cxr.evaluation.risk_coverage import REFERRAL_CI_METRICS, REFERRAL_METRICS

# What a scored model keeps of `evaluate_folder`'s answer.
SCORE_KEYS = ("operating_point", "operating_points", "metrics", "ci", "n", "report", "plots")
# Metrics logged to MLflow and shown side by side (threshold ones at the model's default operating point).
EXTERNAL_METRICS = (
    *("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1"),
    *REFERRAL_METRICS,
)
POINT_RATES = ("accuracy", "sensitivity", "specificity")
TRAINING_SPLITS = ("train", "valid")


class ExternalResult(WithArtifacts):
    """One external set scored with the challenger and (when there is one) the champion of that moment."""

    name: str
    data_dir: str
    data_digest: str
    n: int
    quarantined: int
    challenger: dict[str, Any]
    champion: dict[str, Any] | None = None
    champion_version: int | None = None

    def is_intact(self) -> bool:
        """Whether the reports and plots this result points at are still there."""
        scores = [self.challenger, *([self.champion] if self.champion else [])]
        paths = [path for score in scores for path in [score["report"], *score["plots"].values()]]
        return all(Path(path).is_file() for path in paths)

    def summary(self) -> dict[str, Any]:
        """What `cxr train --json` shows under `external.NAME`."""
        return self.model_dump(mode="json", exclude={"artifacts"})


def check_external_sets(sets: dict[str, str], training_dir: str | None = None) -> None:
    """Before any training: each set's folder exists, lies apart from the training folder (neither inside the
    other) and names files of both classes (by path; not decoded)."""
    for name, folder in sets.items():
        if not Path(folder).is_dir():
            raise DataError(f"external set {name}: folder not found: {folder}")
        if training_dir is not None and _nested(Path(folder), Path(training_dir)):
            raise DataError(f"external set {name}: {folder} overlaps the training folder {training_dir}")
        files = [item for item in scan_folder(Path(folder)) if item.problem is None]
        counts = Counter(labelled.label for labelled in label_all(files, detect_layout(files)))
        missing = [label for label in CLASSES if not counts.get(label)]
        if missing:
            raise DataError(
                f"external set {name}: {folder} has no {' or '.join(missing)} images "
                f"({ {label: counts.get(label, 0) for label in CLASSES} }); its metrics need both classes"
            )


def _nested(first: Path, second: Path) -> bool:
    first, second = first.resolve(), second.resolve()
    return first.is_relative_to(second) or second.is_relative_to(first)


def score_on_set(model: str, data_dir: str) -> dict[str, Any]:
    """Metrics with CIs at the model's default point, and rates at each of its points, on a labelled folder."""
    return {key: evaluate_folder(model, Path(data_dir))[key] for key in SCORE_KEYS}


def validate_external(
    name: str, data_dir: str, challenger: str, training_split: str, champion: tuple[int, str] | None
) -> ExternalResult:
    """Score external set `name` with the challenger (a model file) and `champion` ((version, URI) or None)."""
    check_external_sets({name: data_dir})
    try:
        scored = evaluate_folder(challenger, Path(data_dir))
    except DataError as error:
        raise DataError(f"external set {name}: {error}") from error
    _refuse_training_images(name, scored["manifest"], training_split)
    result = ExternalResult(
        name=name,
        data_dir=scored["data_dir"],
        data_digest=scored["data_digest"],
        n=scored["n"],
        quarantined=scored["quarantined"],
        challenger={key: scored[key] for key in SCORE_KEYS},
        champion=score_on_set(champion[1], data_dir) if champion else None,
        champion_version=champion[0] if champion else None,
    )
    return result.model_copy(update={"artifacts": [_artifact(result)]})


def _refuse_training_images(name: str, manifest: str, training_split: str) -> None:
    """DataError when the set holds an image (same content) that the run trained or tuned on."""
    external = set(pd.read_parquet(manifest, columns=["sha256"])["sha256"])
    split = pd.read_parquet(training_split, columns=["sha256", "split"])
    shared = external & set(split.loc[split["split"].isin(TRAINING_SPLITS), "sha256"])
    if shared:
        raise DataError(
            f"external set {name}: {len(shared)} of its images are in this run's training data "
            f"({'/'.join(TRAINING_SPLITS)} splits); an external set must come from elsewhere"
        )


def champion_metrics_now(
    results: dict[str, ExternalResult], current: int | None, model_name: str
) -> dict[str, dict[str, Any] | None]:
    """The champion's metrics on each set; re-scored where the champion moved since the set was scored."""
    if current is None:
        return dict.fromkeys(results)
    return {
        name: (
            result.champion["metrics"]
            if result.champion and result.champion_version == current
            else score_on_set(f"models:/{model_name}/{current}", result.data_dir)["metrics"]
        )
        for name, result in results.items()
    }


def mlflow_metrics(results: dict[str, ExternalResult]) -> dict[str, float]:
    """`external.NAME.auc`, `...auc_ci_low`, `external.NAME.champion.auc` and
    `external.NAME.point.POINT.sensitivity` (every operating point of the challenger), as flat floats."""
    flat: dict[str, float] = {}
    for name, result in results.items():
        scores = {f"external.{name}": result.challenger, f"external.{name}.champion": result.champion}
        for prefix, score in scores.items():
            if not score:
                continue
            flat |= _present({f"{prefix}.{key}": score["metrics"].get(key) for key in EXTERNAL_METRICS})
            for key in (*CI_METRICS, *REFERRAL_CI_METRICS):
                if score["ci"].get(key):
                    flat[f"{prefix}.{key}_ci_low"], flat[f"{prefix}.{key}_ci_high"] = score["ci"][key]
        for point, rates in result.challenger["operating_points"].items():
            slug = re.sub(r"[^A-Za-z0-9_.-]", ".", point)  # `SITE:x` -> `SITE.x`: MLflow names allow no colon
            flat |= _present({f"external.{name}.point.{slug}.{key}": rates.get(key) for key in POINT_RATES})
    return flat


def _present(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items() if value is not None}


def log_to_mlflow(results: dict[str, ExternalResult]) -> None:
    """Into the active MLflow run: the metrics above, and each set's plots and reports under `external/NAME/`."""
    import mlflow

    mlflow.log_metrics(mlflow_metrics(results))
    for name, result in results.items():
        for role, score in (("challenger", result.challenger), ("champion", result.champion)):
            for path in [score["report"], *score["plots"].values()] if score else []:
                mlflow.log_artifact(path, artifact_path=f"external/{name}/{role}")


def comparison_rows(result: ExternalResult) -> list[tuple[str, dict[str, Any]]]:
    """(label, score) of the challenger and, when scored, the champion."""
    rows = [("challenger", result.challenger)]
    if result.champion:
        rows.append((f"champion v{result.champion_version}", result.champion))
    return rows


def with_ci(score: dict[str, Any], key: str) -> str:
    interval, value = score["ci"].get(key), score["metrics"].get(key)
    text = "n/a" if value is None else f"{value:.3f}"
    return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def comparison_markdown(result: ExternalResult) -> str:
    """Both models on the set at their default points (95 % bootstrap CIs), then the challenger at each point."""
    keys = ("auc", "sensitivity", "specificity", "accuracy", "pr_auc")
    table = "| model | point | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys) + "\n"
    table += "\n".join(
        f"| {label} | `{score['operating_point']}` | "
        + " | ".join(with_ci(score, key) for key in keys)
        + " |"
        for label, score in comparison_rows(result)
    )
    points = "| challenger point | threshold | " + " | ".join(POINT_RATES) + " |\n|---|---|---|---|---|\n"
    points += "\n".join(
        f"| `{point}` | {rates['threshold']:.4f} | "
        + " | ".join(format_metric(rates.get(key)) for key in POINT_RATES)
        + " |"
        for point, rates in result.challenger["operating_points"].items()
    )
    referral = (
        "| model | " + " | ".join(REFERRAL_CI_METRICS) + " | coverage_at_target |\n|---|" + "---|" * 5 + "\n"
    )
    referral += "\n".join(
        f"| {label} | "
        + " | ".join(with_ci(score, key) for key in REFERRAL_CI_METRICS)
        + f" | {format_metric(score['metrics'].get('coverage_at_target'))} |"
        for label, score in comparison_rows(result)
        if "coverage" in score["metrics"]
    )
    return f"{table}\n\n{points}\n\nImages answered alone (outside the referral band):\n\n{referral}"


def _artifact(result: ExternalResult) -> Artifact:
    plots = "\n\n".join(
        f"![{label} {plot}]({png_data_uri(Path(score['plots'][plot]))})"
        for label, score in comparison_rows(result)
        for plot in ("roc-curve", "pr-curve")
    )
    markdown = (
        f"# External set `{result.name}`\n\n`{result.data_dir}`: {result.n} images scored, {result.quarantined} "
        f"quarantined; content digest `{result.data_digest[:16]}`.\n\n{comparison_markdown(result)}\n\n{plots}\n"
    )
    key = "external-" + re.sub(r"[^a-z0-9-]", "-", result.name.lower())
    return Artifact(key=key, markdown=markdown, description=f"External validation on {result.name}")
