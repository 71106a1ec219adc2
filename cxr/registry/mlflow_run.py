"""What the MLflow run of a trained model records, and the model card of its registered version.

The run holds the lineage (params), test and validation metrics, the training curves, the evaluation
plots and report, the self-contained pyfunc model (`cxr.registry.pyfunc_logging`), the network's
`model.summary()`, the TensorBoard logs, `prefect.*` tags naming the flow run that made it and,
once the version number is known, the model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cxr.evaluation.evaluate import EvaluationResult
from cxr.evaluation.external_sets import ExternalResult
from cxr.evaluation.metrics import CI_METRICS
from cxr.evaluation.risk_coverage import REFERRAL_CI_METRICS, REFERRAL_METRICS
from cxr.model.loading import load_model_with_metadata
from cxr.model.operating_points import mlflow_tags
from cxr.model.training import TrainResult
from cxr.registry.model_card import ModelCard, PointResult
from cxr.registry.run_links import flow_run_tags
from cxr.registry.versions import MODEL_ARTIFACT

# Test metrics compared in the promotion decision and stored as `test_<metric>` version tags.
DECISION_METRICS = (
    *("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1"),
    *REFERRAL_METRICS,  # coverage and the rates on the images answered alone
)
SUMMARY_FILE = "model_summary.txt"
CARD_FILE = "model_card.md"
TENSORBOARD_ARTIFACTS = "tensorboard"


def rounded(metrics: dict[str, Any], keys: tuple[str, ...] = DECISION_METRICS) -> dict[str, float | None]:
    return {key: (None if metrics.get(key) is None else round(float(metrics[key]), 6)) for key in keys}


def flat_metrics(train: TrainResult, evaluation: EvaluationResult) -> dict[str, float]:
    """Test metrics and their CI bounds, validation metrics and the training time, as flat floats."""
    flat: dict[str, float] = {}
    for key, value in rounded(evaluation.metrics).items():
        if value is not None:
            flat[f"test_{key}"] = value
    for key in (*CI_METRICS, *REFERRAL_CI_METRICS):
        if evaluation.ci.get(key):
            flat[f"test_{key}_ci_low"], flat[f"test_{key}_ci_high"] = evaluation.ci[key]
    for key, value in train.valid_metrics.items():
        if isinstance(value, int | float) and np.isfinite(value):
            flat[f"valid_{key}"] = float(value)
    flat["train_seconds"] = float(train.train_seconds)
    flat["threshold"] = float(train.threshold)
    return flat


def _log_history(history: dict[str, list[float]]) -> None:
    import mlflow

    epochs = max((len(values) for values in history.values()), default=0)
    for epoch in range(epochs):
        values = {
            f"epoch_{key}": float(series[epoch]) for key, series in history.items() if epoch < len(series)
        }
        mlflow.log_metrics(values, step=epoch + 1)


def model_summary(model) -> str:  # noqa: ANN001 - keras.Model
    """`model.summary()` as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def log_training_run(train: TrainResult, evaluation: EvaluationResult, lineage: dict[str, Any]):  # noqa: ANN201
    """Record everything about `train` into the active MLflow run; returns the logged model's ModelInfo."""
    import mlflow

    from cxr.registry.pyfunc_logging import (
        log_pyfunc_model,  # imported here: loading the flow must not load MLflow
    )

    mlflow.set_tags({**flow_run_tags(), **mlflow_tags(train.operating_points, train.default_operating_point)})
    mlflow.log_params(
        {
            **{f"lineage.{key}": str(value)[:500] for key, value in lineage.items()},
            "model_name": train.model_name,
            "device": train.device,
            "epochs_run": train.epochs_run,
            "resumed_from_epoch": train.resumed_from_epoch,
            "model_sha256": train.model_sha256,
            "evaluation_split": evaluation.split,
            "evaluation_n": evaluation.n,
        }
    )
    mlflow.log_metrics(flat_metrics(train, evaluation))
    _log_history(train.history)
    for plot in evaluation.plots.values():
        mlflow.log_artifact(str(plot), artifact_path="evaluation")
    mlflow.log_artifact(str(evaluation.report_path), artifact_path="evaluation")
    mlflow.log_artifact(str(train.metadata_path))
    network, _ = load_model_with_metadata(train.model_path)
    mlflow.log_text(model_summary(network), SUMMARY_FILE)
    if train.tensorboard_dir and Path(train.tensorboard_dir).is_dir():
        mlflow.log_artifacts(train.tensorboard_dir, artifact_path=TENSORBOARD_ARTIFACTS)
    return log_pyfunc_model(
        train.model_path, train.metadata_path, model_sha256=train.model_sha256, name=MODEL_ARTIFACT
    )


def model_card(
    name: str,
    version: int,
    train: TrainResult,
    evaluation: EvaluationResult,
    lineage: dict[str, Any],
    links: dict[str, str],
    external: dict[str, ExternalResult] | None = None,
) -> ModelCard:
    """The card of version `version`: each operating point of the model with the test metrics at it.

    The point the evaluation used has every metric with its bootstrap CI; the others have the rates the
    evaluation measured at their thresholds, and their validation rates with Wilson CIs in the rule.
    """
    trained = json.loads(Path(train.metadata_path).read_text())
    from cxr.model.operating_points import (
        operating_points,  # imported here: loading the flow must not load MLflow
    )

    points, default = operating_points(trained)
    results = {point: _point_result(point, spec, evaluation) for point, spec in points.items()}
    return ModelCard(
        model_name=name,
        version=version,
        architecture=train.model_name,
        model_sha256=train.model_sha256,
        image_size=train.image_size,
        data_dir=str(lineage.get("data_dir", "?")),
        data_digest=str(lineage.get("data_digest", "?")),
        images=lineage.get("images") or {},
        split_counts=lineage.get("split_counts") or {},
        reviewed=lineage.get("reviewed") or {},
        evaluation_split=evaluation.split,
        evaluation_n=evaluation.n,
        operating_points=results,
        default_operating_point=default,
        links=links,
        external={name: result.summary() for name, result in (external or {}).items()},
        referral={"band": trained.get("referral"), **evaluation.referral},
    )


def _point_result(name: str, spec: dict[str, Any], evaluation: EvaluationResult) -> PointResult:
    if name == evaluation.operating_point:
        metrics, ci = evaluation.metrics, evaluation.ci
    else:
        metrics, ci = evaluation.operating_points.get(name, {}), {}
    rule = str(spec.get("rule", ""))
    if spec.get("sensitivity_ci") and spec.get("specificity_ci"):
        rule += "; validation " + ", ".join(
            f"{key} {spec[key]:.3f} [{spec[f'{key}_ci'][0]:.3f}, {spec[f'{key}_ci'][1]:.3f}]"
            for key in ("sensitivity", "specificity")
        )
    return PointResult(threshold=float(spec["threshold"]), rule=rule, metrics=metrics, ci=ci)
