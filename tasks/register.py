"""Log a trained model to MLflow, register it and decide champion vs challenger."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from cxr import faults
from cxr.artifacts import Artifact, WithArtifacts
from cxr.caching import ContentKey
from cxr.config import GateParams
from cxr.evaluation import EvaluationResult, champion_scorer_for
from cxr.locking import registry_lock
from cxr.metrics import CI_METRICS
from cxr.registry import (
    CHAMPION_ALIAS,
    MODEL_ARTIFACT,
    champion_version,
    client,
    ensure_experiment,
    load_model_with_metadata,
    promote,
    quiet_mlflow,
    version_metrics,
)
from cxr.sharding import BatchesResult
from cxr.state import default_tracking_uri
from cxr.training import TrainResult

# Test metrics compared in the promotion decision and stored as `test_<metric>` version tags.
DECISION_METRICS = ("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1")
LINEAGE_TAGS = ("data_digest", "config_digest", "code_version")
DECISION_TAG = "promotion_decision"


class RegistrationResult(WithArtifacts):
    model_name: str
    version: int
    champion: bool
    run_id: str
    model_uri: str
    decision: dict[str, Any]


def _numbers(metrics: dict[str, Any], keys: tuple[str, ...] = DECISION_METRICS) -> dict[str, float | None]:
    return {key: (None if metrics.get(key) is None else round(float(metrics[key]), 6)) for key in keys}


def _mlflow_metrics(train: TrainResult, evaluation: EvaluationResult) -> dict[str, float]:
    """Test metrics and their CI bounds, validation metrics and the training time, as flat floats."""
    flat: dict[str, float] = {}
    for key, value in _numbers(evaluation.metrics).items():
        if value is not None:
            flat[f"test_{key}"] = value
    for key in CI_METRICS:
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


def _signature(model) -> Any:  # noqa: ANN001, ANN401 - keras.Model -> ModelSignature
    """Signature from a zero batch; `input_example` is avoided because it can fail in mlflow.tensorflow."""
    from mlflow.models import infer_signature

    size = int(model.input_shape[1])
    zeros = np.zeros((1, size, size, 1), dtype=np.float32)
    return infer_signature(zeros, np.asarray(model.predict(zeros, verbose=0), dtype=np.float32))


def _log_and_register(
    train: TrainResult,
    evaluation: EvaluationResult,
    lineage: dict[str, Any],
    name: str,
    tracking_uri: str,
) -> Any:  # noqa: ANN401 - mlflow ModelVersion
    """One MLflow run with params, metrics, plots, report and the model; the version is registered last."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    model, _ = load_model_with_metadata(train.model_path)
    model_files = [str(Path(train.model_path).resolve()), str(Path(train.metadata_path).resolve())]
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{train.model_name}-{train.model_sha256[:8]}"
    ):
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
        mlflow.log_metrics(_mlflow_metrics(train, evaluation))
        _log_history(train.history)
        for plot in evaluation.plots.values():
            mlflow.log_artifact(str(plot), artifact_path="evaluation")
        mlflow.log_artifact(str(evaluation.report_path), artifact_path="evaluation")
        mlflow.log_artifact(str(train.metadata_path))
        info = mlflow.tensorflow.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=_signature(model),
            pip_requirements=[
                f"tensorflow=={package_version('tensorflow')}",
                f"keras=={package_version('keras')}",
            ],
            # The byte-identical trained file (checked against model_sha256) and its metadata.
            extra_files=model_files,
        )
        tags = {
            **{key: str(lineage.get(key, "")) for key in LINEAGE_TAGS},
            "model_sha256": train.model_sha256,
            "model_name": train.model_name,
            "threshold": f"{train.threshold:.6f}",
            **{f"test_{key}": str(value) for key, value in _numbers(evaluation.metrics).items()},
        }
        mlflow_client = client(tracking_uri)
        if not mlflow_client.search_registered_models(f"name = '{name}'"):
            mlflow_client.create_registered_model(name)
        run_id = mlflow.active_run().info.run_id
        faults.kill_at("kill_before_version")
        return mlflow_client.create_model_version(
            name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )


def _existing_version(name: str, model_sha256: str, tracking_uri: str) -> Any:  # noqa: ANN401
    """The version already registered for this exact model file (a retry or a rerun), if any."""
    found = client(tracking_uri).search_model_versions(
        f"name = '{name}' and tags.model_sha256 = '{model_sha256}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    gate: GateParams,
) -> tuple[bool, str]:
    """(promote?, reason) for the challenger's and champion's metrics on the same split."""
    if champion is None:
        return True, "first model: no champion yet"
    metric = gate.metric
    new, old = challenger.get(metric), champion.get(metric)
    sensitivity = challenger.get("sensitivity")
    if new is None:
        return False, f"challenger {metric} is undefined on this split"
    if sensitivity is None or sensitivity < gate.sensitivity_floor:
        return False, f"challenger sensitivity {sensitivity} below the floor {gate.sensitivity_floor}"
    if old is not None and new < old + gate.margin:
        return False, f"challenger {metric} {new:.4f} < champion {old:.4f} + margin {gate.margin}"
    return (
        True,
        f"challenger {metric} {new:.4f} >= champion {'n/a' if old is None else f'{old:.4f}'} + margin {gate.margin}",
    )


def _apply_gate(
    name: str,
    version: int,
    challenger: dict[str, Any],
    gate: GateParams,
    champion_scorer: Callable[[str], dict] | None,
    tracking_uri: str,
) -> dict[str, Any]:
    """Score the current champion, decide, record the decision on the version, then move the alias."""
    current = champion_version(name, tracking_uri)
    champion_metrics = None
    scored_on = None
    if current is not None:
        champion_uri = f"models:/{name}/{current}"
        if champion_scorer is not None:
            champion_metrics, scored_on = champion_scorer(champion_uri), "current split"
        else:
            tags = client(tracking_uri).get_model_version(name, str(current)).tags
            champion_metrics, scored_on = version_metrics(tags), "champion's recorded metrics"
    faults.pause("pause_in_gate")
    promoted, reason = decide(challenger, champion_metrics, gate)
    decision = {
        "promoted": promoted,
        "reason": reason,
        "gate": gate.model_dump(),
        "challenger_version": version,
        "challenger": _numbers(challenger),
        "champion_version": current,
        "champion": None if champion_metrics is None else _numbers(champion_metrics),
        "champion_scored_on": scored_on,
    }
    client(tracking_uri).set_model_version_tag(name, str(version), DECISION_TAG, json.dumps(decision))
    if promoted:
        promote(name, version, reason, tracking_uri)
    return decision


def register_model(
    train: TrainResult,
    evaluation: EvaluationResult,
    *,
    lineage: dict[str, Any],
    registered_model_name: str,
    tracking_uri: str,
    gate: GateParams,
    champion_scorer: Callable[[str], dict] | None = None,
) -> RegistrationResult:
    """Register the trained model as a new version and promote it to champion if it passes the gate.

    Idempotent per model file: a version already registered with the same sha256 is reused, and its
    recorded decision too, so a retry after a partial failure neither duplicates nor re-decides.
    `champion_scorer(model_uri)` re-scores the champion on the challenger's split; without it the
    champion's recorded test metrics are compared. Concurrent runs take turns (an inter-process lock
    per store and model), so each gate sees the champion the previous registration left.
    """
    quiet_mlflow()
    faults.fail_first("registry")
    name = registered_model_name
    with registry_lock(tracking_uri, name):
        model_version = _existing_version(name, train.model_sha256, tracking_uri) or _log_and_register(
            train, evaluation, lineage, name, tracking_uri
        )
        version = int(model_version.version)
        recorded = model_version.tags.get(DECISION_TAG)
        decision = (
            json.loads(recorded)
            if recorded
            else _apply_gate(name, version, evaluation.metrics, gate, champion_scorer, tracking_uri)
        )
        champion = champion_version(name, tracking_uri) == version
    return RegistrationResult(
        model_name=name,
        version=version,
        champion=champion,
        run_id=model_version.run_id,
        model_uri=f"models:/{name}/{version}",
        decision=decision,
    )


def decision_markdown(result: RegistrationResult) -> str:
    """Both models' numbers side by side and the outcome."""
    decision = result.decision
    champion = decision.get("champion") or {}
    champion_label = (
        f"champion v{decision['champion_version']}" if decision.get("champion_version") else "champion"
    )
    rows = "\n".join(
        f"| {key} | {_cell(value)} | {_cell(champion.get(key))} |"
        for key, value in decision["challenger"].items()
    )
    outcome = f"promoted to `{CHAMPION_ALIAS}`" if decision["promoted"] else "not promoted"
    return (
        f"# {result.model_name} v{result.version}: {outcome}\n\n{decision['reason']}.\n\n"
        f"Gate: `{json.dumps(decision['gate'])}`; champion scored on: {decision.get('champion_scored_on') or '-'}.\n\n"
        f"| metric | challenger v{result.version} | {champion_label} |\n|---|---|---|\n{rows}\n"
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _tracking_store(inputs: dict[str, Any]) -> str:
    """Cache-key content: the store, so a run against another registry registers there too."""
    return default_tracking_uri()


@task(
    name="register",
    cache_policy=ContentKey(
        modules=("cxr.registry", "cxr.evaluation", "cxr.metrics"), fingerprint=_tracking_store
    ),
    persist_result=True,
    retries=3,
    retry_delay_seconds=[2, 5, 15],
)
def register(
    train: TrainResult,
    evaluation: EvaluationResult,
    batches: BatchesResult,
    lineage: dict[str, Any],
    registered_model_name: str,
    gate: GateParams,
) -> RegistrationResult:
    """Register the model in MLflow and apply the champion/challenger gate on the current test split."""
    tracking_uri = default_tracking_uri()
    result = register_model(
        train,
        evaluation,
        lineage=lineage,
        registered_model_name=registered_model_name,
        tracking_uri=tracking_uri,
        gate=gate,
        champion_scorer=champion_scorer_for(batches, tracking_uri, split=evaluation.split),
    )
    decision = Artifact(key="promotion-decision", markdown=decision_markdown(result))
    result = result.model_copy(update={"artifacts": [decision]})
    return result
