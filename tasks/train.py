"""Stage `train`: fit a model on the train split, pick its decision threshold on the valid split, save it.

Training resumes after a crash (or a Prefect retry) from the last finished epoch: Keras'
`BackupAndRestore` keeps the weights in a checkpoint folder keyed by the run's inputs, and the
per-epoch history is kept next to it so the resumed run reports every epoch.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import math
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel

from cxr import CLASSES, faults
from cxr.caching import ContentKey, code_version, sha256_text, stable_json
from cxr.errors import DataError, ModelError
from cxr.files import sha256_file, write_atomically
from cxr.state import state_dir
from tasks.batches import BatchesResult, load_split, make_dataset

if TYPE_CHECKING:
    import keras

ProgressCallback = Callable[[int, dict[str, float]], None]
HISTORY_FILE = "history.json"
# BackupAndRestore's own record of the last finished epoch (a Keras implementation detail, read-only).
BACKUP_METADATA_FILE = "training_metadata.json"
DECISION_RULE = "pneumonia when P(pneumonia) >= threshold"


class ThresholdChoice(BaseModel):
    """A decision threshold on P(pneumonia) and how it was chosen; the rates are on the data it was chosen on."""

    threshold: float
    rule: str
    sensitivity: float
    specificity: float


class TrainResult(BaseModel):
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


# One-sided 95 % bound: the validation split is a sample, and a threshold that just reaches the
# target there misses it on new data about half the time (measured: 0.95 on valid, 0.93 on test).
SENSITIVITY_CONFIDENCE_Z = 1.645


def wilson_lower_bound(successes: np.ndarray, n: int, z: float) -> np.ndarray:
    """Lower Wilson score bound of a binomial proportion (vectorised over `successes`)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def choose_threshold(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, target_sensitivity: float, *, z: float = 0.0
) -> ThresholdChoice:
    """The threshold with the highest specificity whose sensitivity reaches the target.

    With `z > 0` the sensitivity that must reach the target is its lower Wilson bound at that z,
    not the observed value; when no threshold's bound reaches it (a small validation split), the
    observed value is used. The lowest observed score always reaches any target, by calling
    everything pneumonia; when only such useless thresholds (specificity 0) reach it, the model is
    too weak for the target and the threshold maximising Youden's J = sensitivity + specificity - 1
    is used instead. The decision is `P(pneumonia) >= threshold`; the threshold lies halfway between
    the chosen score and the next lower one.
    """
    from sklearn.metrics import roc_curve  # here, so a fully cached run never loads sklearn

    is_pneumonia = np.asarray(is_pneumonia, dtype=bool)
    if is_pneumonia.all() or not is_pneumonia.any():
        raise DataError("choosing a threshold needs both classes in the validation split")
    fpr, tpr, thresholds = roc_curve(
        is_pneumonia, np.asarray(p_pneumonia, dtype=np.float64), drop_intermediate=False
    )
    # The first point is roc_curve's "nothing is positive" threshold (+inf), not a usable decision.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    # Halfway down to the next lower score: the same decisions on this data, with the most margin.
    midpoints = np.append((thresholds[:-1] + thresholds[1:]) / 2, thresholds[-1])
    positives = int(is_pneumonia.sum())
    bounded = wilson_lower_bound(tpr * positives, positives, z) if z > 0 else tpr
    # roc_curve orders thresholds from high to low, so specificity falls along the array:
    # the first index reaching the target has the highest specificity (and threshold).
    candidates = [
        (bounded, f"max-specificity-at-sensitivity>={target_sensitivity:g}-lower-bound-z{z:g}"),
        (tpr, f"max-specificity-at-sensitivity>={target_sensitivity:g}"),
    ]
    best, rule = int(np.argmax(tpr - fpr)), "youden-j"
    for sensitivity, candidate_rule in reversed(candidates[0 if z > 0 else 1 :]):
        reaching = np.flatnonzero((sensitivity >= target_sensitivity) & (fpr < 1))
        if reaching.size:  # later (stricter) candidates override earlier ones
            best, rule = int(reaching[0]), candidate_rule
    return ThresholdChoice(
        threshold=float(midpoints[best]),
        rule=rule,
        sensitivity=float(tpr[best]),
        specificity=float(1 - fpr[best]),
    )


def train_model(
    batches: BatchesResult,
    *,
    model_name: str,
    epochs: int,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    patience: int,
    target_sensitivity: float,
    out_dir: Path,
    checkpoint_dir: Path,
    tensorboard_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    backbone_weights: str | None = None,
) -> TrainResult:
    """Train `model_name` on the train split; write `model.keras` + `model.json` into `out_dir`.

    `backbone_weights`: a user-supplied weights file the model's backbone starts from (see
    `cxr.models.build_model`). Early stopping watches the validation AUC and keeps the best epoch's weights. A backup in
    `checkpoint_dir` from an interrupted run with the same inputs is resumed; it is deleted on success.
    `progress(epoch, logs)` is called after each epoch (1-based epoch numbers).
    """
    if epochs < 1 or batch_size < 1 or patience < 1:
        raise DataError(
            f"epochs, batch_size and patience must be positive: {epochs}, {batch_size}, {patience}"
        )
    train_images, train_labels = load_split(batches, "train")
    valid_images, valid_labels = load_split(batches, "valid")
    weights = class_weights(train_labels)
    if len(valid_labels) == 0:
        raise DataError("the validation split is empty")

    # Imported here, not at module level, so that a fully cached run never loads TensorFlow.
    import keras

    from cxr.device import configure_devices, distribution_strategy, seed_everything
    from cxr.models import PNEUMONIA_INDEX, build_augmentation, build_model

    keras.backend.clear_session()  # also resets the precision policy, which configure_devices sets
    device = seed_everything(seed, configure_devices())
    steps_per_epoch = math.ceil(len(train_labels) / batch_size)
    with distribution_strategy(device).scope():
        model = build_model(
            model_name,
            batches.image_size,
            learning_rate=learning_rate,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            backbone_weights=backbone_weights,
        )
    train_data = make_dataset(
        train_images,
        train_labels,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        augment=build_augmentation(model_name, seed=seed),
    )
    valid_data = make_dataset(valid_images, valid_labels, batch_size=batch_size, shuffle=False, seed=seed)

    checkpoint_dir = Path(checkpoint_dir)
    resumed_from_epoch = _finished_epochs(checkpoint_dir)
    recorder = _EpochRecorder(checkpoint_dir / HISTORY_FILE, resumed_from_epoch, progress)
    callbacks: list[keras.callbacks.Callback] = [
        # First, so an epoch is backed up before anything later in the list can fail.
        keras.callbacks.BackupAndRestore(str(checkpoint_dir)),
        keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.LambdaCallback(
            on_epoch_begin=recorder.on_epoch_begin, on_epoch_end=recorder.on_epoch_end
        ),
    ]
    if tensorboard_dir is not None:
        if importlib.util.find_spec("tensorboard") is None:
            # TensorFlow only writes summaries through the tensorboard package; logs are optional.
            _logger().warning("tensorboard is not installed: no TensorBoard logs for this run")
        else:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=False))

    started = time.perf_counter()
    model.fit(
        train_data,
        validation_data=valid_data,
        epochs=epochs,
        class_weight=weights,
        callbacks=callbacks,
        shuffle=False,  # make_dataset already shuffles, by the seed
        verbose=0,
    )
    train_seconds = time.perf_counter() - started

    p_pneumonia = model.predict(valid_data, verbose=0)[:, PNEUMONIA_INDEX]
    is_pneumonia = valid_labels == PNEUMONIA_INDEX
    choice = choose_threshold(p_pneumonia, is_pneumonia, target_sensitivity, z=SENSITIVITY_CONFIDENCE_Z)
    valid_metrics = _binary_metrics(p_pneumonia, is_pneumonia, choice)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    write_atomically(model_path, lambda tmp: model.save(str(tmp)))
    history = recorder.history
    epochs_run = len(history.get("loss", []))
    best_epoch = int(np.argmax(history["val_auc"])) + 1 if history.get("val_auc") else epochs_run
    metadata = {
        "model_name": model_name,
        "image_size": batches.image_size,
        "classes": list(CLASSES),
        "threshold": choice.threshold,
        "threshold_rule": choice.rule,
        "decision": DECISION_RULE,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "seed": seed,
        "batches_digest": batches.digest,
        "backbone_weights": backbone_weights,
        "backbone_weights_sha256": backbone_weights_digest(backbone_weights),
        "device": device.model_dump(),
        "valid_metrics": valid_metrics,
    }
    metadata_path = out_dir / "model.json"
    write_atomically(metadata_path, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2)))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)

    return TrainResult(
        model_path=str(model_path),
        model_sha256=sha256_file(model_path),
        metadata_path=str(metadata_path),
        model_name=model_name,
        image_size=batches.image_size,
        threshold=choice.threshold,
        threshold_rule=choice.rule,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        resumed_from_epoch=resumed_from_epoch,
        device=device.model_dump(),
        history=history,
        train_seconds=round(train_seconds, 3),
        images_per_second=_images_per_second(
            len(train_labels), history["epoch_seconds"][resumed_from_epoch:]
        ),
        valid_metrics=valid_metrics,
    )


def load_trained_model(model_path: str | Path) -> keras.Model:
    """Load a `.keras` model with `safe_mode=True`; files that are missing, unreadable or run code are refused."""
    import keras

    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ModelError(
                f"refusing to load {path}: it contains arbitrary code (e.g. a Lambda layer)"
            ) from error
        raise ModelError(f"cannot load model {path}: {error}") from error
    except (OSError, TypeError, KeyError, zipfile.BadZipFile) as error:
        raise ModelError(f"cannot load model {path}: {error}") from error
    if tuple(model.output_shape) != (None, len(CLASSES)) or len(model.input_shape) != 4:
        raise ModelError(
            f"{path} is not a classifier of (S, S, 1) images into {CLASSES}: "
            f"input {model.input_shape}, output {model.output_shape}"
        )
    return model


def read_model_metadata(model_path: str | Path) -> dict[str, Any]:
    """The `model.json` written next to a trained `model.keras` (threshold, classes, image size...)."""
    path = Path(model_path).with_name("model.json")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read model metadata {path}: {error}") from error


class _EpochRecorder:
    """Keeps the full history across resumptions (in the checkpoint folder) and reports each epoch.

    A plain class hooked into Keras through a `LambdaCallback`, so this module imports without Keras.
    """

    def __init__(self, path: Path, resumed_from_epoch: int, progress: ProgressCallback | None):
        self.path = path
        self.progress = progress
        self.history: dict[str, list[float]] = self._earlier_epochs(resumed_from_epoch)
        self._epoch_started = 0.0

    def _earlier_epochs(self, count: int) -> dict[str, list[float]]:
        if count == 0 or not self.path.is_file():
            return {}
        saved = json.loads(self.path.read_text())
        return {key: values[:count] for key, values in saved.items()}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = {key: float(value) for key, value in (logs or {}).items()}
        values["epoch_seconds"] = time.perf_counter() - self._epoch_started
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        write_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(self.history)))
        if self.progress is not None:
            self.progress(epoch + 1, values)
        faults.kill_at("kill_after_epoch", epoch + 1)


def _finished_epochs(checkpoint_dir: Path) -> int:
    """Epochs an interrupted run with the same checkpoint folder finished (0 when there is no backup)."""
    metadata = checkpoint_dir / BACKUP_METADATA_FILE
    if not metadata.is_file():
        return 0
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _images_per_second(images_per_epoch: int, epoch_seconds: list[float]) -> float:
    """Throughput of a typical epoch (validation included); the first one also builds the graphs, so it
    only counts when it is the only one."""
    steady = epoch_seconds[1:] or epoch_seconds
    return round(images_per_epoch / max(float(np.median(steady)), 1e-9), 1)


def _binary_metrics(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, choice: ThresholdChoice
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    predicted = p_pneumonia >= choice.threshold
    return {
        "auc": float(roc_auc_score(is_pneumonia, p_pneumonia)),
        "accuracy": float(np.mean(predicted == is_pneumonia)),
        "sensitivity": choice.sensitivity,
        "specificity": choice.specificity,
        "threshold": choice.threshold,
        "n": float(len(is_pneumonia)),
    }


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def run_digest(batches: BatchesResult, **settings: Any) -> str:
    """Digest of everything that decides a training run: data, settings and the training code."""
    payload = {
        "batches": batches.digest,
        "settings": settings,
        "code": code_version(("cxr.models", "cxr.device", __name__)),
    }
    return sha256_text(stable_json(payload))[:16]


def backbone_weights_digest(path: str | None) -> str | None:
    """SHA-256 of a backbone weights file, so replacing the file at the same path retrains (None: no file)."""
    if path is None or not Path(path).is_file():
        return None  # a missing file fails in build_model, with a clear ModelError
    return sha256_file(Path(path))


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

    logger = _logger()
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
