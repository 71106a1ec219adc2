"""Training: class weights, threshold rule, saved artefacts, determinism, crash resume, safe loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from cxr import CLASSES
from cxr.config.params import TrainParams
from cxr.core.errors import DataError, ModelError
from cxr.data.batches import BatchesResult, load_split, write_batches
from cxr.model.history import BACKUP_METADATA_FILE
from cxr.model.loading import load_model_with_metadata
from cxr.model.operating_points import DEFAULT_OPERATING_POINT, choose_operating_points
from cxr.model.thresholds import choose_threshold, wilson_lower_bound
from cxr.model.training import class_weights, train_model
from tasks import train as train_stage

SIZE = 32


def _split_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy grey images; pneumonia ones (label 0) carry a bright opacity in the lower half."""
    images = rng.normal(90, 25, (len(labels), SIZE, SIZE, 1))
    images[labels == 0, SIZE // 2 :, : SIZE // 2] += 90
    return np.clip(images, 0, 255).astype(np.uint8)


def make_batches(root: Path, *, n_train: int = 40, n_valid: int = 16, seed: int = 0) -> BatchesResult:
    """A BatchesResult over tiny synthetic splits, pneumonia three times as common as normal."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, count in (("train", n_train), ("valid", n_valid)):
        labels = (np.arange(count) % 4 == 0).astype(np.int8)  # 1 = normal, every fourth image
        splits[name] = (_split_images(labels, rng), labels)
    return write_batches(root, splits, digest=f"synthetic-{seed}")


@pytest.fixture
def batches(tmp_path) -> BatchesResult:
    return make_batches(tmp_path / "batches")


PARAMS = TrainParams(
    model="seed", epochs=2, batch_size=8, seed=7, early_stopping_patience=3, target_sensitivity=0.9
)


def _train(batches: BatchesResult, run_dir: Path, params: TrainParams = PARAMS, **kwargs):
    return train_model(
        batches, params, out_dir=run_dir / "model", checkpoint_dir=run_dir / "checkpoint", **kwargs
    )


def test_class_weights_are_balanced():
    labels = np.array([0] * 30 + [1] * 10, dtype=np.int8)
    weights = class_weights(labels)
    assert weights == pytest.approx({0: 40 / (2 * 30), 1: 40 / (2 * 10)})
    # Weighted class totals are equal: each class counts as half the data.
    assert 30 * weights[0] == pytest.approx(10 * weights[1]) == pytest.approx(20)


def test_class_weights_need_both_classes():
    with pytest.raises(DataError, match="normal"):
        class_weights(np.zeros(5, dtype=np.int8))


def test_threshold_has_highest_specificity_at_target_sensitivity():
    is_pneumonia = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
    choice = choose_threshold(scores, is_pneumonia, 0.75)
    # 0.7 is the lowest score keeping specificity 1; halfway to the next score (0.6) keeps the margin.
    assert (choice.threshold, choice.sensitivity, choice.specificity) == pytest.approx((0.65, 0.75, 1.0))
    assert choice.rule == "max-specificity-at-sensitivity>=0.75"
    # All four pneumonias only above 0.4, which also catches the normal image at 0.6.
    strict = choose_threshold(scores, is_pneumonia, 1.0)
    assert (strict.threshold, strict.sensitivity, strict.specificity) == pytest.approx((0.35, 1.0, 0.75))
    assert ((scores >= strict.threshold) & is_pneumonia).sum() == 4


def test_threshold_falls_back_to_youden_when_target_needs_zero_specificity():
    is_pneumonia = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.05, 0.6, 0.3, 0.2, 0.1])  # one pneumonia scores lowest
    choice = choose_threshold(scores, is_pneumonia, 1.0)
    assert choice.rule == "youden-j"
    # J at 0.7: 0.75 + 1.0 - 1 = 0.75, the best of all thresholds.
    assert (choice.threshold, choice.sensitivity, choice.specificity) == pytest.approx((0.65, 0.75, 1.0))


def test_threshold_with_confidence_bound_keeps_a_sensitivity_margin():
    # 200 pneumonias scored 0.005..1.0 and 200 normals scored below 0.5: the observed rule stops at
    # 95 % sensitivity; the 95 % lower bound needs about 97.5 % of them.
    is_pneumonia = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    scores = np.r_[np.linspace(0.005, 1.0, 200), np.linspace(0.0, 0.49, 200)]
    observed = choose_threshold(scores, is_pneumonia, 0.95)
    bounded = choose_threshold(scores, is_pneumonia, 0.95, z=1.645)
    assert observed.sensitivity == pytest.approx(0.95)
    assert bounded.threshold < observed.threshold and 0.97 <= bounded.sensitivity < 0.99
    assert bounded.rule == "max-specificity-at-sensitivity>=0.95-lower-bound-z1.645"
    lower = wilson_lower_bound(np.array([bounded.sensitivity * 200]), 200, 1.645)[0]
    assert lower >= 0.95


def test_threshold_bound_falls_back_to_observed_on_small_validation_sets():
    is_pneumonia = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
    assert choose_threshold(scores, is_pneumonia, 0.75, z=1.645) == choose_threshold(
        scores, is_pneumonia, 0.75
    )


def test_threshold_needs_both_classes():
    with pytest.raises(DataError, match="both classes"):
        choose_threshold(np.array([0.2, 0.9]), np.array([True, True]), 0.9)


def test_training_saves_a_loadable_model_with_metadata(batches, tmp_path):
    epochs_seen = []
    result = _train(
        batches,
        tmp_path / "run",
        tensorboard_dir=tmp_path / "tb",
        progress=lambda epoch, logs: epochs_seen.append((epoch, sorted(logs))),
    )
    assert [epoch for epoch, _ in epochs_seen] == [1, 2]
    assert {"loss", "auc", "val_auc", "val_loss", "accuracy"} <= set(epochs_seen[0][1])
    assert (result.epochs_run, result.resumed_from_epoch) == (2, 0)
    assert 1 <= result.best_epoch <= 2
    assert all(len(values) == 2 for values in result.history.values())
    assert result.device["kind"] == "cpu" and result.images_per_second > 0
    assert 0 <= result.threshold <= 1 and result.threshold_rule.startswith(
        "max-specificity-at-sensitivity>=0.95"
    )
    assert set(result.valid_metrics) >= {"auc", "sensitivity", "specificity", "accuracy"}
    assert result.valid_metrics["sensitivity"] >= 0.9

    model_path = Path(result.model_path)
    assert model_path.name == "model.keras" and not list(model_path.parent.glob(".*tmp*"))
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == result.model_sha256
    loaded, metadata = load_model_with_metadata(model_path)
    assert metadata == json.loads(Path(result.metadata_path).read_text())
    assert metadata["classes"] == list(CLASSES) and metadata["image_size"] == SIZE
    assert (metadata["threshold"], metadata["threshold_rule"]) == (result.threshold, result.threshold_rule)
    assert metadata["model_name"] == "seed" and metadata["seed"] == 7 and metadata["epochs_run"] == 2

    assert not (tmp_path / "run" / "checkpoint").exists()  # backup removed after success
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))

    images, labels = load_split(batches, "valid")
    p_pneumonia = loaded.predict(images.astype("float32"), verbose=0)[:, 0]
    is_pneumonia = labels == 0
    recomputed = choose_operating_points(p_pneumonia, is_pneumonia, PARAMS.target_sensitivity)
    assert metadata["default_operating_point"] == result.default_operating_point == DEFAULT_OPERATING_POINT
    assert set(metadata["operating_points"]) == set(recomputed) == set(result.operating_points)
    for name, point in recomputed.items():
        assert metadata["operating_points"][name]["threshold"] == pytest.approx(point.threshold, rel=1e-5)
    assert result.threshold == metadata["operating_points"][DEFAULT_OPERATING_POINT]["threshold"]
    assert metadata["calibration"]["valid_nll_calibrated"] <= metadata["calibration"]["valid_nll"]
    # The referral band, fitted on the validation split around the default threshold (`cxr.model.referral_fit`).
    band = metadata["referral"]
    assert band["low"] <= result.threshold <= band["high"] and band["threshold"] == result.threshold
    assert band["fitted_on"] == "validation split" and band["n"] == len(labels)
    assert (band["target_sensitivity"], band["target_specificity"]) == (0.95, 0.85)


def test_same_seed_gives_identical_weights_on_cpu(batches, tmp_path):
    """The default model: augmentation, dropout and shuffling are all seeded."""
    first, second = (
        _train(batches, tmp_path / name, PARAMS.model_copy(update={"model": "default", "epochs": 1}))
        for name in "ab"
    )
    weights_first = load_model_with_metadata(first.model_path)[0].get_weights()
    weights_second = load_model_with_metadata(second.model_path)[0].get_weights()
    for a, b in zip(weights_first, weights_second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_resumes_after_a_crash(batches, tmp_path):
    run_dir = tmp_path / "run"

    def crash_after_first_epoch(epoch: int, logs: dict) -> None:
        if epoch == 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(batches, run_dir, progress=crash_after_first_epoch)
    assert json.loads((run_dir / "checkpoint" / BACKUP_METADATA_FILE).read_text())["epoch"] == 1
    assert not (run_dir / "model" / "model.keras").exists()

    epochs_seen = []
    result = _train(batches, run_dir, progress=lambda epoch, logs: epochs_seen.append(epoch))
    assert (result.resumed_from_epoch, result.epochs_run) == (1, 2)
    assert epochs_seen == [2]  # only the unfinished epoch ran again
    assert all(len(values) == 2 for values in result.history.values())
    assert not (run_dir / "checkpoint").exists()


def test_early_stopping_stops_on_a_flat_validation_auc_and_patience_zero_runs_every_epoch(batches, tmp_path):
    # A learning rate of 1e-12 leaves the predictions, so the validation AUC, as they were after epoch 1.
    frozen = PARAMS.model_copy(update={"epochs": 4, "learning_rate": 1e-12, "early_stopping_patience": 1})
    stopped = _train(batches, tmp_path / "stopped", frozen)
    assert (stopped.epochs_run, stopped.best_epoch) == (2, 1)
    every_epoch = _train(batches, tmp_path / "all", frozen.model_copy(update={"early_stopping_patience": 0}))
    assert (every_epoch.epochs_run, every_epoch.best_epoch) == (4, 4)


def test_bad_training_settings_are_refused(batches, tmp_path):
    with pytest.raises(DataError, match="positive"):
        _train(batches, tmp_path, PARAMS.model_copy(update={"epochs": 0}))  # past validation
    with pytest.raises(DataError, match="patience not negative"):
        _train(batches, tmp_path, PARAMS.model_copy(update={"early_stopping_patience": -1}))
    with pytest.raises(ModelError, match="valid names"):
        _train(batches, tmp_path, PARAMS.model_copy(update={"model": "nope"}))


def _save_with_metadata(model: keras.Model, path: Path) -> Path:
    model.save(path)
    path.with_name("model.json").write_text(json.dumps({"threshold": 0.5, "image_size": SIZE}))
    return path


def test_lambda_models_are_refused(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x / 255.0)(inputs))
    )
    path = _save_with_metadata(keras.Model(inputs, outputs), tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="cannot load .* safely"):
        load_model_with_metadata(path)


def test_unreadable_or_missing_model_files_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model_with_metadata(tmp_path / "missing.keras")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="no model.json"):
        load_model_with_metadata(garbage)
    garbage.with_name("model.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load"):
        load_model_with_metadata(garbage)


def test_models_with_the_wrong_output_are_refused(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    path = _save_with_metadata(model, tmp_path / "three.keras")
    with pytest.raises(ModelError, match="2-way softmax"):
        load_model_with_metadata(path)


def test_train_key_names_one_checkpoint_folder_per_set_of_inputs(batches, tmp_path):
    """The stage names its folders by its cache key: a retry of the same inputs finds the same checkpoint;
    other inputs never resume from it."""

    def key(data: BatchesResult, params: TrainParams) -> str:
        return train_stage.CACHE.key(train_stage.train, {"batches": data, "params": params})

    assert key(batches, PARAMS) == key(batches, TrainParams(**PARAMS.model_dump()))
    assert key(batches, PARAMS) != key(batches, PARAMS.model_copy(update={"seed": 8}))
    assert key(batches, PARAMS) != key(make_batches(tmp_path / "other", seed=1), PARAMS)
