"""Train a model: fit on the train split, choose its operating points on the valid split, save it.

Training resumes after a crash (or a retry) from the last finished epoch: Keras' `BackupAndRestore`
keeps the weights in a checkpoint folder keyed by the run's inputs, and the per-epoch history is kept
next to it (`cxr.model.history`) so the resumed run reports every epoch.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from cxr import CLASSES
from cxr.config.params import TrainParams
from cxr.core.artifacts import WithArtifacts
from cxr.core.atomic_files import sha256_file, write_atomically
from cxr.core.errors import DataError
from cxr.core.progress import keras_progress_callback, stage_progress
from cxr.data.batches import BatchesResult
from cxr.data.datasets import split_dataset
from cxr.data.shards import read_labels
from cxr.model.history import (
    HISTORY_FILE,
    EpochRecorder,
    ProgressCallback,
    finished_epochs,
    images_per_second,
)
from cxr.model.operating_points import (
    DEFAULT_OPERATING_POINT,
    choose_operating_points,
    fit_temperature,
    metadata_entries,
)
from cxr.model.referral_fit import band_for, describe
from cxr.model.thresholds import DECISION_RULE, ThresholdChoice, binary_metrics

if TYPE_CHECKING:
    import keras


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger inside a Prefect run, else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# Prefect progress artifact (percent of training steps) on the run's dashboard page.
PROGRESS_ARTIFACT = "training-progress"


class TrainResult(WithArtifacts):
    model_path: str
    model_sha256: str
    metadata_path: str
    model_name: str
    image_size: int
    threshold: float
    threshold_rule: str
    epochs_run: int
    best_epoch: int
    resumed_from_epoch: int
    device: dict[str, Any]
    history: dict[str, list[float]]
    train_seconds: float
    images_per_second: float
    valid_metrics: dict[str, float]
    tensorboard_dir: str | None = None
    # {name: {threshold, rule, sensitivity, specificity, *_ci}}; `threshold` is the default point's.
    operating_points: dict[str, dict[str, Any]] = {}
    default_operating_point: str = DEFAULT_OPERATING_POINT

    def is_intact(self) -> bool:
        """Whether the saved model is still there, byte for byte, with its metadata."""
        model = Path(self.model_path)
        return (
            model.is_file() and Path(self.metadata_path).is_file() and sha256_file(model) == self.model_sha256
        )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (k * n_c), so each class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(CLASSES))
    if (counts == 0).any():
        missing = [name for name, count in zip(CLASSES, counts, strict=True) if count == 0]
        raise DataError(f"the training split has no images of class {', '.join(missing)}")
    return {index: float(counts.sum() / (len(counts) * count)) for index, count in enumerate(counts)}


def train_model(
    batches: BatchesResult,
    params: TrainParams,
    *,
    out_dir: Path,
    checkpoint_dir: Path,
    tensorboard_dir: Path | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train `params.model` on the train split; write `model.keras` + `model.json` into `out_dir`.

    `params.backbone_weights`: a user-supplied weights file the model's backbone starts from (see
    `cxr.model.networks.build_model`). With `params.early_stopping_patience` > 0, early stopping watches the validation
    AUC and keeps the best epoch's weights; with 0 the whole schedule runs and the last weights are kept. A backup in
    `checkpoint_dir` from an interrupted run with the same inputs is resumed; it is deleted on success.
    `progress(epoch, logs)` is called after each epoch (1-based epoch numbers).
    """
    epochs, batch_size, patience = params.epochs, params.batch_size, params.early_stopping_patience
    if epochs < 1 or batch_size < 1 or patience < 0:
        raise DataError(
            f"epochs and batch_size must be positive, patience not negative: {epochs}, {batch_size}, {patience}"
        )
    train_labels = read_labels(batches.shards("train"))
    valid_labels = read_labels(batches.shards("valid"))
    weights = class_weights(train_labels)
    if len(valid_labels) == 0:
        raise DataError("the validation split is empty")

    steps_per_epoch = math.ceil(len(train_labels) / batch_size)
    device, model, train_data, valid_data = _model_and_data(batches, params, steps_per_epoch)

    checkpoint_dir = Path(checkpoint_dir)
    resumed_from_epoch = finished_epochs(checkpoint_dir)
    recorder = EpochRecorder(checkpoint_dir / HISTORY_FILE, resumed_from_epoch, progress)
    callbacks = _callbacks(recorder, checkpoint_dir, patience, tensorboard_dir)
    started = time.perf_counter()
    _fit(
        model,
        (train_data, valid_data),
        weights,
        callbacks,
        params,
        steps_per_epoch,
        recorder,
        resumed_from_epoch,
    )
    train_seconds = time.perf_counter() - started

    stored, choice, valid_metrics = _validation_points(model, valid_data, valid_labels, params)

    history = recorder.history
    metadata = _metadata(batches, params, history, device.model_dump(), stored, valid_metrics)
    model_path, metadata_path = _save(model, metadata, Path(out_dir))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)

    return TrainResult(
        model_path=str(model_path),
        model_sha256=sha256_file(model_path),
        metadata_path=str(metadata_path),
        model_name=params.model,
        image_size=batches.image_size,
        threshold=choice.threshold,
        threshold_rule=choice.rule,
        epochs_run=metadata["epochs_run"],
        best_epoch=metadata["best_epoch"],
        resumed_from_epoch=resumed_from_epoch,
        device=device.model_dump(),
        history=history,
        train_seconds=round(train_seconds, 3),
        images_per_second=images_per_second(len(train_labels), history["epoch_seconds"][resumed_from_epoch:]),
        valid_metrics=valid_metrics,
        tensorboard_dir=None if tensorboard_dir is None else str(tensorboard_dir),
        operating_points=stored["operating_points"],
        default_operating_point=stored["default_operating_point"],
    )


def _model_and_data(batches: BatchesResult, params: TrainParams, steps_per_epoch: int):
    """(device, compiled model, train and validation datasets), seeded, inside the device's strategy."""
    # Imported here, not at module level, so that a fully cached run never loads TensorFlow.
    import keras

    from cxr.model.device import configure_devices, distribution_strategy, seed_everything
    from cxr.model.networks import build_augmentation, build_model

    model_name, batch_size, seed = params.model, params.batch_size, params.seed
    keras.backend.clear_session()  # also resets the precision policy, which configure_devices sets
    device = seed_everything(seed, configure_devices())
    with distribution_strategy(device).scope():
        model = build_model(
            model_name,
            batches.image_size,
            learning_rate=params.learning_rate,
            steps_per_epoch=steps_per_epoch,
            epochs=params.epochs,
            backbone_weights=params.backbone_weights,
        )
    train_data = split_dataset(
        batches,
        "train",
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        augment=build_augmentation(model_name, seed=seed),
    )
    valid_data = split_dataset(batches, "valid", batch_size=batch_size, shuffle=False, seed=seed)
    return device, model, train_data, valid_data


def _metadata(
    batches: BatchesResult,
    params: TrainParams,
    history: dict,
    device: dict,
    stored: dict,
    valid_metrics: dict,
) -> dict:
    """`model.json`: what the model is, how it decides, and how it was trained."""
    epochs_run = len(history.get("loss", []))
    # Without early stopping the last epoch's weights are kept, whatever epoch scored best.
    best_epoch = (
        int(np.argmax(history["val_auc"])) + 1
        if params.early_stopping_patience > 0 and history.get("val_auc")
        else epochs_run
    )
    return {
        "model_name": params.model,
        "image_size": batches.image_size,
        "classes": list(CLASSES),
        **stored,
        "decision": DECISION_RULE,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "seed": params.seed,
        "batches_digest": batches.digest,
        "backbone_weights": params.backbone_weights,
        "backbone_weights_sha256": backbone_weights_digest(params.backbone_weights),
        "device": device,
        "valid_metrics": valid_metrics,
    }


def _save(model, metadata: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write `model.keras` and then `model.json` into `out_dir`, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    write_atomically(model_path, lambda tmp: model.save(str(tmp)))
    metadata_path = out_dir / "model.json"
    write_atomically(metadata_path, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2)))
    return model_path, metadata_path


def _callbacks(
    recorder: EpochRecorder, checkpoint_dir: Path, patience: int, tensorboard_dir: Path | None
) -> list:
    """Backup (resume), history, early stopping when `patience` > 0, and TensorBoard logs when asked for."""
    import keras

    callbacks: list[keras.callbacks.Callback] = [
        # First, so an epoch is backed up before anything later in the list can fail.
        keras.callbacks.BackupAndRestore(str(checkpoint_dir)),
        keras.callbacks.LambdaCallback(
            on_epoch_begin=recorder.on_epoch_begin, on_epoch_end=recorder.on_epoch_end
        ),
    ]
    if patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=patience, restore_best_weights=True
            )
        )
    if tensorboard_dir is not None:
        if importlib.util.find_spec("tensorboard") is None:
            # TensorFlow only writes summaries through the tensorboard package; logs are optional.
            _logger().warning("tensorboard is not installed: no TensorBoard logs for this run")
        else:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=False))
    return callbacks


def _fit(
    model,
    data,
    weights,
    callbacks,
    params: TrainParams,
    steps_per_epoch: int,
    recorder,
    resumed_from_epoch: int,
):
    """`model.fit` with a progress bar (and dashboard artifact) counting steps, resumed epochs included."""
    epochs = params.epochs
    with stage_progress(
        f"train {params.model}", epochs * steps_per_epoch, "steps", artifact_key=PROGRESS_ARTIFACT
    ) as progress:
        progress.update(completed=resumed_from_epoch * steps_per_epoch)
        model.fit(
            data[0],
            validation_data=data[1],
            epochs=epochs,
            class_weight=weights,
            callbacks=[
                *callbacks,
                keras_progress_callback(progress, epochs=epochs, steps_per_epoch=steps_per_epoch),
            ],
            shuffle=False,  # split_dataset already shuffles, by the seed
            verbose=0,
        )
        epochs_done = len(recorder.history.get("loss", []))
        progress.update(
            completed=progress.total,
            description=f"train {params.model}: {epochs_done}/{epochs} epochs"
            + (" (early stop)" if epochs_done < epochs else ""),
        )


def _validation_points(model, valid_data, valid_labels: np.ndarray, params: TrainParams):
    """(stored operating points, calibration and referral band, the default point's choice, its validation
    metrics)."""
    from cxr.model.networks import PNEUMONIA_INDEX

    p_pneumonia = model.predict(valid_data, verbose=0)[:, PNEUMONIA_INDEX]
    is_pneumonia = valid_labels == PNEUMONIA_INDEX
    points = choose_operating_points(p_pneumonia, is_pneumonia, params.target_sensitivity)
    stored = metadata_entries(points, fit_temperature(p_pneumonia, is_pneumonia))
    default = points[DEFAULT_OPERATING_POINT]
    band = band_for(
        p_pneumonia, is_pneumonia, default.threshold, params.referral, fitted_on="validation split"
    )
    stored["referral"] = band.model_dump()
    _logger().log(
        logging.INFO if band.model_extra["reached"] else logging.WARNING, "referral band: %s", describe(band)
    )
    choice = ThresholdChoice(
        **default.model_dump(include={"threshold", "rule", "sensitivity", "specificity"})
    )
    return stored, choice, binary_metrics(p_pneumonia, is_pneumonia, choice)


def backbone_weights_digest(path: str | None) -> str | None:
    """SHA-256 of a backbone weights file, so replacing the file at the same path retrains (None: no file)."""
    if path is None or not Path(path).is_file():
        return None  # a missing file fails in build_model, with a clear ModelError
    return sha256_file(Path(path))
