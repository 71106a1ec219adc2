"""Stage `train`: train and save a model (`cxr.model.training`) in state folders named by its cache key."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from cxr.config.params import TrainParams
from cxr.core import faults
from cxr.core.artifacts import Artifact
from cxr.core.caching import ContentKey, current_task_key
from cxr.core.state_folder import state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.batches import BatchesResult
from cxr.model.thresholds import DECISION_RULE
from cxr.model.training import TrainResult, backbone_weights_digest, train_model


def _backbone_weights(inputs: dict[str, Any]) -> str:
    """Cache fingerprint: the weights file's bytes, so replacing it at the same path retrains."""
    return str(backbone_weights_digest(inputs["params"].backbone_weights))


CACHE = ContentKey(fingerprint=_backbone_weights)


@task(
    name="train",
    cache_policy=CACHE,
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,  # a retry resumes from the last finished epoch
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.train_s,
)
def train(batches: BatchesResult, params: TrainParams) -> TrainResult:
    """Train and save a model; see `train_model`."""
    from cxr.model.device import DeviceInfo

    logger = get_run_logger()
    key = current_task_key()[:16]
    faults.pause("pause_in_train")

    def log_epoch(epoch: int, logs: dict[str, float]) -> None:
        shown = " ".join(f"{name}={value:.4f}" for name, value in sorted(logs.items()))
        logger.info("epoch %d/%d %s", epoch, params.epochs, shown)

    result = train_model(
        batches,
        params,
        out_dir=state_dir("models", key),
        checkpoint_dir=state_dir("checkpoints", key),
        tensorboard_dir=state_dir("tensorboard", key),
        progress=log_epoch,
    )
    logger.info(
        "trained %s on %s in %.1f s (%.0f img/s), %d epochs (resumed from %d), best %d; threshold %.4f (%s)",
        params.model,
        DeviceInfo(**result.device).describe(),
        result.train_seconds,
        result.images_per_second,
        result.epochs_run,
        result.resumed_from_epoch,
        result.best_epoch,
        result.threshold,
        result.threshold_rule,
    )
    return result.model_copy(update={"artifacts": _artifacts(result, DeviceInfo(**result.device).describe())})


def _artifacts(result: TrainResult, device: str) -> list[Artifact]:
    """Per-epoch history table and a short summary."""
    epochs = range(len(result.history.get("loss", [])))
    rows = [
        {"epoch": index + 1, **{name: round(values[index], 5) for name, values in result.history.items()}}
        for index in epochs
    ]
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.valid_metrics.items())
    summary = (
        f"# Trained `{result.model_name}` ({result.image_size} px)\n\n"
        f"- device: {device}\n"
        f"- epochs run: {result.epochs_run} (best {result.best_epoch}, resumed from {result.resumed_from_epoch})\n"
        f"- {result.images_per_second:.0f} images/s, {result.train_seconds:.0f} s\n"
        f"- threshold {result.threshold:.4f} ({result.threshold_rule}; {DECISION_RULE})\n\n"
        f"| validation metric | value |\n|---|---|\n{metrics}\n"
    )
    return [
        Artifact(key="training-history", table=rows, description=f"{result.model_name}: metrics per epoch"),
        Artifact(
            key="training-summary",
            markdown=summary,
            description="Training summary and validation metrics at the chosen threshold",
        ),
    ]
