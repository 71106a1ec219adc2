"""Stage `domain`: fit the trained model's domain score (`cxr.evaluation.domain_fit`) and store it with the model;
measure the run's data drift (`cxr.evaluation.drift`: the share of new images out of the serving model's domain) and
report it (MLflow metric, warning, `cxr.data.drift` event for the notification automation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cxr.config.params import DomainParams
from cxr.core.artifacts import Artifact
from cxr.core.caching import ContentKey, current_task_key
from cxr.core.errors import ModelError
from cxr.core.mlflow_store import client, store_exists
from cxr.core.state_folder import default_tracking_uri, state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.batches import BatchesResult
from cxr.data.manifests import IngestResult
from cxr.evaluation.domain import DomainGuard
from cxr.evaluation.domain_fit import guard_model
from cxr.evaluation.drift import DriftResult, measure_drift
from cxr.model.loading import METADATA_FILE, resolve_model
from cxr.model.training import TrainResult
from cxr.registry.model_events import DATA_DRIFT_EVENT, post_model_event
from cxr.registry.versions import champion_version

DRIFT_METRIC = "new_images_out_of_domain_share"


@task(
    name="domain",
    cache_policy=ContentKey(),
    persist_result=True,
    retries=1,  # reads shards and writes the model folder: file I/O may fail transiently
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.domain_s,
)
def fit_domain(
    trained: TrainResult, batches: BatchesResult, params: DomainParams, seed: int, min_image_side: int
) -> TrainResult:
    """The trained model with its domain score: same `model.keras`, `model.json` with a `domain` section and the
    smallest image side the model accepts."""
    out_dir = state_dir("models", f"guarded-{current_task_key()[:16]}")
    guard = guard_model(
        Path(trained.model_path), batches, params, seed=seed, min_image_side=min_image_side, out_dir=out_dir
    )
    get_run_logger().info(
        "domain score on %s features (channel means and maxima) and image descriptors: threshold %.3f "
        "(%.1f %% of %d calibration images); flagged %.1f %% of valid, %.1f %% of test",
        guard.layer,
        guard.threshold,
        100 * params.quantile,
        guard.summary["calibration_images"],
        *(100 * guard.summary[f"{split}_flagged_share"] for split in ("valid", "test")),
    )
    return trained.model_copy(
        update={
            "model_path": str(out_dir / Path(trained.model_path).name),
            "metadata_path": str(out_dir / "model.json"),
            "artifacts": [_summary(guard)],
        }
    )


def _summary(guard: DomainGuard) -> Artifact:
    rows = "\n".join(
        f"| {part.name} | {len(part.mean)} | {part.transform} | {part.weight:g} | {part.reference:.3f} |"
        for part in guard.components
    )
    return Artifact(
        key="domain-score",
        description="How far an image may be from the training images before it is flagged out of domain",
        markdown=(
            f"# Domain score\n\nThreshold {guard.threshold:.3f}: quantile {guard.quantile} of the scores of "
            f"{guard.summary['calibration_images']} calibration images (the validation split and training "
            f"images not used to fit). Flagged: {100 * guard.summary['fit_flagged_share']:.1f} % of the "
            f"{guard.summary['fit_images']} fitting images, "
            f"{100 * guard.summary['valid_flagged_share']:.1f} % of validation, "
            f"{100 * guard.summary['test_flagged_share']:.1f} % of test images (neither fits nor calibrates).\n\n"
            "| component | dimensions | transform | weight | calibration distance at the quantile |\n"
            f"|---|---|---|---|---|\n{rows}\n"
        ),
    )


def _champion(registered_model_name: str) -> tuple[int | None, str | None]:
    """(version, model sha256) of the current champion; (None, None) without one."""
    tracking_uri = default_tracking_uri()
    version = champion_version(registered_model_name, tracking_uri) if store_exists(tracking_uri) else None
    if version is None:
        return None, None
    tags = client(tracking_uri).get_model_version(registered_model_name, str(version)).tags
    return version, tags.get("model_sha256")


def _judge(registered_model_name: str, trained: TrainResult) -> tuple[str, Path]:
    """(URI, local path) of the model that judges new images: the champion when it is another model with a
    domain score (it is what serves answers), else the run's own model."""
    version, sha256 = _champion(registered_model_name)
    if version is not None and sha256 != trained.model_sha256:
        uri = f"models:/{registered_model_name}/{version}"
        try:
            path = resolve_model(uri, default_tracking_uri())
        except ModelError as error:  # a damaged champion is the gate's business; drift still gets measured
            get_run_logger().warning(f"drift judged by this run's model: the champion is unusable ({error})")
            return trained.model_path, Path(trained.model_path)
        if DomainGuard.from_metadata(json.loads(path.with_name(METADATA_FILE).read_text())):
            return uri, path
    return trained.model_path, Path(trained.model_path)


def _judge_key(inputs: dict[str, Any]) -> str:
    """Cache-key content: which model judges the new images. The run's own model once it is the champion
    counts as itself, so an identical rerun reuses the measurement."""
    version, sha256 = _champion(inputs["registered_model_name"])
    return "own" if version is None or sha256 == inputs["trained"].model_sha256 else f"{version}:{sha256}"


@task(
    name="domain-drift",
    cache_policy=ContentKey(fingerprint=_judge_key),
    persist_result=True,
    retries=1,  # reads image files and the registry
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.domain_s,
)
def data_drift(
    ingested: IngestResult,
    data_dir: str,
    trained: TrainResult,
    registered_model_name: str,
    params: DomainParams,
) -> DriftResult:
    """The share of the ingest's new images (of `data_dir`) that are out of the serving model's domain."""
    paths = ingested.new_files.read(columns=["path"])["path"].tolist() if ingested.new_files else []
    uri, path = _judge(registered_model_name, trained)
    return measure_drift(paths, path, uri, data_dir=data_dir, alert_share=params.drift_share)


@task(
    name="domain-drift-report",
    cache_policy=NO_CACHE,  # every run reports its drift, even when the measurement was reused
    retries=2,
    retry_delay_seconds=[2, 5],
    retry_condition_fn=retry_transient,  # the registry may be busy
    timeout_seconds=DEFAULT_TIMEOUTS.domain_s,
)
def report_drift(drift: DriftResult, mlflow_run_id: str, model_name: str) -> dict[str, Any]:
    """Log the drift as an MLflow metric of the run's model; above the alert share, warn and post
    `cxr.data.drift` (the `cxr-data-drift` automation sends it to the operator)."""
    logger = get_run_logger()
    if drift.share is not None:
        client(default_tracking_uri()).log_metric(mlflow_run_id, DRIFT_METRIC, drift.share)
    if drift.alert:
        logger.warning(
            "data drift: %d of %d new images are out of domain (%.1f %% > %.1f %%)",
            drift.out_of_domain,
            drift.new_images,
            100 * drift.share,
            100 * drift.alert_share,
        )
        post_model_event(DATA_DRIFT_EVENT, model_name, drift.event_payload())
    return {**drift.model_dump(exclude={"artifacts"}), "alert": drift.alert}
