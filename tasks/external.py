"""Stage `evaluate-external`: score the challenger and the current champion on one external set
(`cxr.evaluation.external_sets`); `register` gates on the result and logs it to the version's MLflow run. With
`calibrate_on`, `calibrate-on-external` makes that set's operating point the model's default (`cxr.registry.site_calibration`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from cxr.core.caching import ContentKey, current_task_key, stable_json
from cxr.core.mlflow_store import store_exists
from cxr.core.state_folder import default_tracking_uri, state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.scanning import data_dir_fingerprint
from cxr.evaluation.evaluate import format_metric
from cxr.evaluation.external_sets import ExternalResult, validate_external
from cxr.model.training import TrainResult
from cxr.registry.site_calibration import with_site_default
from cxr.registry.versions import champion_version


def _champion(model_name: str) -> tuple[int, str] | None:
    """(version, immutable URI) of the champion now; None before the first (or without a registry)."""
    tracking_uri = default_tracking_uri()
    version = champion_version(model_name, tracking_uri) if store_exists(tracking_uri) else None
    return None if version is None else (version, f"models:/{model_name}/{version}")


def _set_and_champion(inputs: dict[str, Any]) -> str:
    """Cache-key content: the folder's listing, and which champion (a version never changes) in which store."""
    champion = _champion(inputs["registered_model_name"])
    return stable_json([data_dir_fingerprint(inputs["data_dir"]), default_tracking_uri(), champion])


@task(
    name="evaluate-external",
    cache_policy=ContentKey(fingerprint=_set_and_champion),
    persist_result=True,
    retries=1,
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.evaluate_s,
)
def evaluate_external(
    name: str,
    data_dir: str,
    model_path: str,
    model_sha256: str,
    split_path: str,
    registered_model_name: str,
) -> ExternalResult:
    """Score external set `name` with the trained model (`model_sha256` keys the cache) and the champion."""
    champion = _champion(registered_model_name)
    result = validate_external(name, data_dir, model_path, split_path, champion)
    get_run_logger().info(
        "external set %s (%d images): challenger AUC %s, champion%s AUC %s",
        name,
        result.n,
        format_metric(result.challenger["metrics"]["auc"]),
        f" v{champion[0]}" if champion else "",
        format_metric(result.champion["metrics"]["auc"]) if result.champion else "n/a (none yet)",
    )
    return result


def _set_listing(inputs: dict[str, Any]) -> str:
    return data_dir_fingerprint(inputs["data_dir"])


@task(
    name="calibrate-on-external",
    cache_policy=ContentKey(fingerprint=_set_listing),
    persist_result=True,
    retries=1,
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.evaluate_s,
)
def calibrate_on_external(trained: TrainResult, name: str, data_dir: str) -> TrainResult:
    """The trained model with external set `name`'s points, `NAME:sensitivity-0.95` its default."""
    result = with_site_default(
        trained, name, Path(data_dir), state_dir("models", f"site-{current_task_key()[:16]}")
    )
    get_run_logger().info(
        "default operating point %s (threshold %.4f) chosen on external set %s",
        result.default_operating_point,
        result.threshold,
        name,
    )
    return result
