"""Stage `train`: train and save a model (`cxr.training`) in a state folder keyed by its inputs."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from cxr.caching import ContentKey, code_version, sha256_text, stable_json
from cxr.sharding import BatchesResult
from cxr.state import state_dir
from cxr.thresholds import DECISION_RULE
from cxr.training import TrainResult, backbone_weights_digest, train_model


def run_digest(batches: BatchesResult, **settings: Any) -> str:
    """Digest of everything that decides a training run: data, settings and the training code."""
    payload = {
        "batches": batches.digest,
        "settings": settings,
        "code": code_version(("cxr.models", "cxr.device", "cxr.training", __name__)),
    }
    return sha256_text(stable_json(payload))[:16]


@task(
    name="train",
    cache_policy=ContentKey(
        modules=("cxr.models", "cxr.device"),
        fingerprint=lambda inputs: str(backbone_weights_digest(inputs.get("backbone_weights"))),
    ),
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,  # a retry resumes from the last finished epoch
)
def train(
    batches: BatchesResult,
    model_name: str,
    epochs: int,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    patience: int,
    target_sensitivity: float,
    backbone_weights: str | None = None,
) -> TrainResult:
    """Train and save a model; see `train_model`."""
    from cxr.device import DeviceInfo

    logger = get_run_logger()
    settings = {
        "model_name": model_name,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "patience": patience,
        "target_sensitivity": target_sensitivity,
        "backbone_weights": backbone_weights,
    }
    key = run_digest(batches, **settings, backbone_weights_sha256=backbone_weights_digest(backbone_weights))

    def log_epoch(epoch: int, logs: dict[str, float]) -> None:
        shown = " ".join(f"{name}={value:.4f}" for name, value in sorted(logs.items()))
        logger.info("epoch %d/%d %s", epoch, epochs, shown)

    result = train_model(
        batches,
        **settings,
        out_dir=state_dir("models", key),
        checkpoint_dir=state_dir("checkpoints", key),
        tensorboard_dir=state_dir("tensorboard", key),
        progress=log_epoch,
    )
    logger.info(
        "trained %s on %s in %.1f s (%.0f img/s), %d epochs (resumed from %d), best %d; threshold %.4f (%s)",
        model_name,
        DeviceInfo(**result.device).describe(),
        result.train_seconds,
        result.images_per_second,
        result.epochs_run,
        result.resumed_from_epoch,
        result.best_epoch,
        result.threshold,
        result.threshold_rule,
    )
    _publish(result)
    return result


def _publish(result: TrainResult) -> None:
    """Per-epoch history table and a short summary as Prefect artifacts."""
    from cxr.device import DeviceInfo

    epochs = range(len(result.history.get("loss", [])))
    rows = [
        {"epoch": index + 1, **{name: round(values[index], 5) for name, values in result.history.items()}}
        for index in epochs
    ]
    create_table_artifact(rows, key="training-history", description=f"{result.model_name}: metrics per epoch")
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.valid_metrics.items())
    create_markdown_artifact(
        f"# Trained `{result.model_name}` ({result.image_size} px)\n\n"
        f"- device: {DeviceInfo(**result.device).describe()}\n"
        f"- epochs run: {result.epochs_run} (best {result.best_epoch}, resumed from {result.resumed_from_epoch})\n"
        f"- {result.images_per_second:.0f} images/s, {result.train_seconds:.0f} s\n"
        f"- threshold {result.threshold:.4f} ({result.threshold_rule}; {DECISION_RULE})\n\n"
        f"| validation metric | value |\n|---|---|\n{metrics}\n",
        key="training-summary",
        description="Training summary and validation metrics at the chosen threshold",
    )
