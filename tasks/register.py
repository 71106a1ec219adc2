"""Stage `register`: log the trained model to MLflow, register it and apply the gate (`cxr.registry.registration`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cxr.config.params import GateParams
from cxr.core.artifacts import Artifact
from cxr.core.caching import ContentKey
from cxr.core.state_folder import default_tracking_uri
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.batches import BatchesResult
from cxr.evaluation.evaluate import EvaluationResult, champion_scorer_for
from cxr.evaluation.external_sets import ExternalResult
from cxr.model.training import TrainResult
from cxr.registry.registration import RegistrationResult, decision_markdown, register_model
from cxr.registry.versions import champion_version


def _tracking_store(inputs: dict[str, Any]) -> str:
    """Cache-key content: the store, so a run against another registry registers there too."""
    return default_tracking_uri()


@task(
    name="register",
    cache_policy=ContentKey(
        modules=(
            "cxr.registry.registration",
            "cxr.registry.versions",
            "cxr.model.loading",
            "cxr.evaluation.evaluate",
            "cxr.evaluation.scoring",
            "cxr.data.split_images",
            "cxr.model.referral",
            "cxr.evaluation.metrics",
            "cxr.registry.mlflow_run",
            "cxr.registry.pyfunc_logging",
            "cxr.registry.gate",
            "cxr.evaluation.external_sets",
        ),
        fingerprint=_tracking_store,
    ),
    persist_result=True,
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.register_s,
)
def register(
    train: TrainResult,
    evaluation: EvaluationResult,
    batches: BatchesResult,
    lineage: dict[str, Any],
    registered_model_name: str,
    gate: GateParams,
    external: dict[str, ExternalResult] | None = None,
) -> RegistrationResult:
    """Register the model in MLflow and apply the champion/challenger gate on the current test split and
    the external sets."""
    tracking_uri = default_tracking_uri()
    result = register_model(
        train,
        evaluation,
        lineage=lineage,
        registered_model_name=registered_model_name,
        tracking_uri=tracking_uri,
        gate=gate,
        champion_scorer=champion_scorer_for(batches, tracking_uri, split=evaluation.split),
        external=external,
    )
    decision = Artifact(key="promotion-decision", markdown=decision_markdown(result))
    result = result.model_copy(update={"artifacts": [decision, *result.artifacts]})
    get_run_logger().info(
        "%s model %s as %s v%d (MLflow run %s)",
        "registered" if result.created else "found already registered:",
        train.model_sha256[:12],
        result.model_name,
        result.version,
        result.run_id,
    )
    return result


# NO_CACHE: the alias moves (promote, rollback, another run's gate) after a registration is cached.
@task(
    name="champion-now",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 5],
    retry_condition_fn=retry_transient,
    timeout_seconds=120,  # one alias read
)
def champion_now(registration: RegistrationResult) -> RegistrationResult:
    """`registration` with `champion` and `champion_version` read from the registry's alias now."""
    current = champion_version(registration.model_name, registration.tracking_uri or default_tracking_uri())
    # No artifacts: the flow published the registration's already.
    return registration.model_copy(
        update={"champion": current == registration.version, "champion_version": current, "artifacts": []}
    )
