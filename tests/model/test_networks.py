"""Architectures, in-model preprocessing, augmentation and device set-up."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr.core.errors import ModelError
from cxr.model.augmentation import AcquisitionShift
from cxr.model.device import configure_devices, distribution_strategy, seed_everything
from cxr.model.networks import (
    BACKBONE_LAYER,
    IMAGENET_BGR_MEANS,
    MODEL_NAMES,
    GreyToRGB,
    GreyToVGG16,
    PerImageStandardization,
    PositiveClassAUC,
    build_augmentation,
    build_model,
)


def _images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 1)).astype("float32")


def test_model_names_match_the_config_choices():
    from typing import get_args

    from cxr.config.params import ModelName

    assert set(MODEL_NAMES) == set(get_args(ModelName))


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ModelError, match="seed, default"):
        build_model("resnet", 32)
    with pytest.raises(ModelError, match="unknown model"):
        build_augmentation("resnet")


def test_too_small_image_size_is_refused():
    with pytest.raises(ModelError, match="at least 16"):
        build_model("default", 8)


def test_seed_model_is_the_tutorial_network_layer_by_layer():
    model = build_model("seed", 224)
    body = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert [type(layer).__name__ for layer in body] == [
        "GreyToVGG16",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
    ]
    _, conv1, pool1, conv2, pool2, _, dense = body
    for conv, filters in ((conv1, 32), (conv2, 64)):
        assert (conv.filters, conv.kernel_size, conv.padding, conv.strides) == (
            filters,
            (3, 3),
            "same",
            (1, 1),
        )
        assert conv.activation is keras.activations.relu
    for pool in (pool1, pool2):
        assert (pool.pool_size, pool.strides) == ((2, 2), (2, 2))
    assert dense.units == 2 and dense.activation is keras.activations.softmax
    # By hand: conv1 3*3*3*32+32 = 896; conv2 3*3*32*64+64 = 18,496;
    # 224 -> 112 -> 56 after the pools, flatten 56*56*64 = 200,704; dense 200,704*2+2 = 401,410.
    assert model.count_params() == 896 + 18_496 + 401_410 == 420_802
    assert model.input_shape == (None, 224, 224, 1) and model.output_shape == (None, 2)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert model.loss == "categorical_crossentropy"


def test_grey_to_vgg16_is_the_caffe_preprocessing_of_a_grey_image():
    grey = np.full((1, 4, 4, 1), 100.0, dtype="float32")
    out = np.asarray(GreyToVGG16()(grey))
    assert out.shape == (1, 4, 4, 3)
    # preprocess_input(rgb, mode='caffe') == rgb[..., ::-1] - BGR means; grey RGB has equal channels.
    np.testing.assert_allclose(out[0, 0, 0], 100.0 - np.array(IMAGENET_BGR_MEANS), rtol=1e-6)


def test_per_image_standardization_removes_exposure_differences():
    image = _images(1, 16)
    brighter = image * 0.5 + 60  # same picture, other gain and offset
    layer = PerImageStandardization()
    out, out_brighter = np.asarray(layer(image)), np.asarray(layer(brighter))
    assert out.mean() == pytest.approx(0, abs=1e-5) and out.std() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(out, out_brighter, atol=1e-4)
    assert np.isfinite(np.asarray(layer(np.zeros((1, 8, 8, 1), "float32")))).all()  # flat image


def test_default_model_builds_small_and_has_a_compact_size():
    model = build_model("default", 32, steps_per_epoch=5, epochs=3)
    assert 500_000 <= model.count_params() <= 1_500_000
    probabilities = model.predict(_images(3, 32), verbose=0)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    # 15 steps: warm-up over min(one epoch, a fifth) = 3 steps, then cosine decay.
    rates = [float(schedule(step)) for step in (0, 3, 14)]
    assert rates[0] < rates[1] == pytest.approx(1e-3) and rates[2] < rates[1]  # warm-up, peak, decay


def test_mobilenet_is_mobilenet_v3_small_on_the_grey_image_as_rgb():
    for size in (32, 64):
        model = build_model("mobilenet", size, steps_per_epoch=5, epochs=3)
        assert [layer.name for layer in model.layers] == [
            "image",
            "grey_to_rgb",
            BACKBONE_LAYER,
            "gap",
            "head_dropout",
            "probabilities",
        ]
        backbone = model.get_layer(BACKBONE_LAYER)
        assert backbone.input_shape == (None, size, size, 3)
        # MobileNetV3's own preprocessing takes the 0..255 values GreyToRGB passes on.
        rescaling = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Rescaling))
        assert (rescaling.scale, rescaling.offset) == pytest.approx((1 / 127.5, -1.0))
        probabilities = model.predict(_images(3, size), verbose=0)
        assert probabilities.shape == (3, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert 900_000 <= model.count_params() <= 1_000_000
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    with pytest.raises(ModelError, match="at least 32"):
        build_model("mobilenet", 16)


def test_grey_to_rgb_copies_the_grey_channel_unchanged():
    grey = _images(2, 4)
    rgb = np.asarray(GreyToRGB()(grey))
    assert rgb.shape == (2, 4, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey[..., 0])


def test_backbone_weights_from_a_user_file_are_loaded(tmp_path):
    source = build_model("mobilenet", 32).get_layer(BACKBONE_LAYER)
    path = tmp_path / "b.weights.h5"
    source.save_weights(path)
    # Another size: convolution weights do not depend on it.
    backbone = build_model("mobilenet", 64, backbone_weights=str(path)).get_layer(BACKBONE_LAYER)
    for loaded, saved in zip(backbone.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)
    fresh = build_model("mobilenet", 32).get_layer(BACKBONE_LAYER)
    assert not all(
        np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source.get_weights(), strict=True)
    )


def test_missing_or_incompatible_backbone_weights_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build_model("mobilenet", 32, backbone_weights=tmp_path / "missing.weights.h5")
    other = tmp_path / "default.weights.h5"
    build_model("default", 32).save_weights(other)
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not an HDF5 file")
    for path in (other, garbage):
        with pytest.raises(ModelError, match="cannot load backbone weights"):
            build_model("mobilenet", 32, backbone_weights=path)
    with pytest.raises(ModelError, match="no pretrained backbone"):
        build_model("seed", 32, backbone_weights=other)


def test_config_accepts_backbone_weights_only_for_pretrainable_models():
    from pydantic import ValidationError

    from cxr.config.params import RetrainConfig

    train = {"model": "mobilenet", "backbone_weights": "/w/b.weights.h5"}
    config = RetrainConfig(data_dir="/data", train=train).train
    assert (config.image_size, config.epochs, config.batch_size) == (160, 8, 32)
    assert RetrainConfig(data_dir="/data").train.backbone_weights is None
    for model in ("seed", "default"):
        with pytest.raises(ValidationError, match="backbone_weights only apply to mobilenet"):
            RetrainConfig(data_dir="/data", train={"model": model, "backbone_weights": "/w/b.weights.h5"})


def test_train_cache_key_follows_the_backbone_weights_content(tmp_path):
    from cxr.model.training import backbone_weights_digest

    path = tmp_path / "b.weights.h5"
    path.write_bytes(b"first")
    first = backbone_weights_digest(str(path))
    path.write_bytes(b"second")  # same path, other weights: must not reuse the cached model
    assert first != backbone_weights_digest(str(path)) and len(first) == 64
    assert backbone_weights_digest(None) is None


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for name in MODEL_NAMES:
            model = build_model(name, 32)
            assert model.layers[-1].dtype_policy.name == "float32"
            assert model.output.dtype == "float32"
            assert model.layers[2].compute_dtype == "float16"  # the body runs in half precision
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_train_under_mixed_precision(name):
    """The GPU code path (float16 body, loss scaling), exercised on the CPU."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(name, 32, steps_per_epoch=2, epochs=1)
        # Tracing MobileNetV3's graph takes ~25 s on a CPU; eagerly it runs the same float16 maths in ~3 s.
        model.run_eagerly = name == "mobilenet"
        labels = keras.utils.to_categorical(np.arange(16) % 2, 2)
        history = model.fit(_images(16, 32), labels, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["loss"][0]) and 0 <= history.history["auc"][0] <= 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_saved_model_loads_in_safe_mode_with_identical_predictions(tmp_path, name):
    model = build_model(name, 32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = _images(4, 32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


def test_augmentation_is_seeded_keeps_range_and_never_flips():
    assert build_augmentation("seed") is None
    augment = build_augmentation("default", seed=3)
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in augment.layers)
    images = _images(8, 32)
    out = np.asarray(augment(images, training=True))
    assert out.shape == images.shape
    assert not np.allclose(out, images)
    assert out.min() >= 0 and out.max() <= 255
    again = np.asarray(build_augmentation("default", seed=3)(images, training=True))
    np.testing.assert_allclose(out, again)


@pytest.mark.parametrize("squash", [1.0, 12.0])  # 12: a confident model, scores within 1e-5 of 0 or 1
def test_auc_metric_is_the_pneumonia_column_auc(squash):
    rng = np.random.default_rng(1)
    is_pneumonia = rng.integers(0, 2, 400).astype(bool)
    logits = squash * (1.5 * is_pneumonia - 0.75 + rng.normal(0, 1, 400))
    p_pneumonia = 1 / (1 + np.exp(-logits))
    y_true = np.stack([is_pneumonia, ~is_pneumonia], axis=1).astype("float32")
    y_pred = np.stack([p_pneumonia, 1 - p_pneumonia], axis=1).astype("float32")
    metric = PositiveClassAUC()
    metric.update_state(y_true, y_pred)
    assert metric.name == "auc"
    assert float(metric.result()) == pytest.approx(roc_auc_score(is_pneumonia, p_pneumonia), abs=5e-3)
    restored = PositiveClassAUC.from_config(metric.get_config())
    assert (restored.class_index, restored.num_thresholds) == (metric.class_index, metric.num_thresholds)


def test_cpu_device_configuration_is_float32_and_deterministic():
    info = seed_everything(0, configure_devices(prefer_gpu=False))
    assert (info.kind, info.count, info.mixed_precision, info.strategy) == ("cpu", 1, False, "default")
    assert info.deterministic
    assert keras.mixed_precision.global_policy().name == "float32"
    assert distribution_strategy(info) is not None
    assert "cpu" in info.describe()


def test_acquisition_shift_is_seeded_keeps_range_and_only_acts_in_training():
    shift = AcquisitionShift(border_rate=1.0, marker_rate=0.0, seed=5)
    images = np.full((6, 32, 32, 1), 128.0, dtype="float32")
    out = np.asarray(shift(images, training=True))
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, images)
    assert (out[:, 0, 0, 0] == 0).mean() > 0.5  # a dark collimation frame on (almost) every image
    np.testing.assert_allclose(
        out, np.asarray(AcquisitionShift(border_rate=1.0, marker_rate=0.0, seed=5)(images))
    )
    np.testing.assert_array_equal(np.asarray(shift(images, training=False)), images)
    assert any(isinstance(layer, AcquisitionShift) for layer in build_augmentation("default", seed=1).layers)
    assert not any(
        isinstance(layer, AcquisitionShift) for layer in build_augmentation("mobilenet", seed=1).layers
    )
