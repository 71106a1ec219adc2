"""Model architectures: each takes raw 0..255 greyscale (S, S, 1) and returns a softmax over `cxr.CLASSES`.

Preprocessing lives inside each model as registered layers (no Lambda), so a saved `.keras` file is
self-contained and loads with `safe_mode=True`. Augmentation is separate (`build_augmentation`)
because it belongs to the training input pipeline, not to the served model.

Pretrained weights are never downloaded: a pretrained-capable model (`ModelSpec.pretrainable`) starts
from random weights, or from a backbone weights file the user supplies (`backbone_weights=`).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from cxr import CLASSES
from cxr.config.architectures import MODEL_NAMES, MODEL_SPECS, PRETRAINABLE_MODELS
from cxr.core.errors import ModelError
from cxr.model.augmentation import AcquisitionShift

PNEUMONIA_INDEX = CLASSES.index("pneumonia")
# The layer of a pretrained-capable model that `backbone_weights` are loaded into.
BACKBONE_LAYER = "backbone"
# VGG16 'caffe' preprocessing: ImageNet channel means in BGR order.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
# The AUC metric resolves probabilities from sigmoid(-16) ~ 1e-7 to 1 - 1e-7.
LOGIT_RANGE = 16.0


@keras.saving.register_keras_serializable(package="cxr")
class GreyToVGG16(layers.Layer):
    """Grey 0..255 -> the input VGG16's `preprocess_input` ('caffe' mode) makes of the same grey image.

    The tutorial fed 3-channel copies of the grey X-ray through `preprocess_input`: RGB -> BGR, then
    subtract the ImageNet means. The channels are equal, so the flip only matters for the means' order.
    """

    def call(self, inputs):
        rgb = ops.concatenate([inputs, inputs, inputs], axis=-1)
        bgr = ops.flip(rgb, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="cxr")
class GreyToRGB(layers.Layer):
    """Grey (S, S, 1) -> three equal channels (S, S, 3), values unchanged.

    For ImageNet-style backbones that take 0..255 RGB and rescale it themselves (MobileNetV3's own
    `Rescaling` layer, `include_preprocessing=True`).
    """

    def call(self, inputs):
        return ops.concatenate([inputs, inputs, inputs], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="cxr")
class PerImageStandardization(layers.Layer):
    """Standardise each image to zero mean, unit variance, so exposure and scanner gain do not matter.

    `epsilon` (in grey levels) keeps a flat image from dividing by zero.
    """

    def __init__(self, epsilon: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        std = ops.std(inputs, axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / ops.maximum(std, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="cxr")
class PositiveClassAUC(keras.metrics.AUC):
    """ROC AUC of one softmax column (default: pneumonia) against its one-hot label.

    Keras' plain AUC on a 2-column softmax pools both columns, which is not the pneumonia-vs-normal AUC.
    Its thresholds are evenly spaced in logit space (not probability), because a confident softmax puts
    most scores within 1e-4 of 0 or 1, where evenly spaced bins cannot rank them.
    """

    def __init__(self, class_index: int = PNEUMONIA_INDEX, name: str = "auc", thresholds=None, **kwargs):
        if thresholds is None and "num_thresholds" not in kwargs:
            thresholds = _logit_spaced(LOGIT_RANGE, count=498)
        super().__init__(name=name, thresholds=thresholds, **kwargs)
        self.class_index = class_index

    def update_state(self, y_true, y_pred, sample_weight=None):
        column = self.class_index
        return super().update_state(y_true[:, column], y_pred[:, column], sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "class_index": self.class_index}


def _logit_spaced(logit_range: float, count: int) -> list[float]:
    logits = np.linspace(-logit_range, logit_range, count)
    return (1 / (1 + np.exp(-logits))).tolist()


def _metrics() -> list:
    return ["accuracy", PositiveClassAUC()]


def _softmax_head(x, name: str = "probabilities"):
    # float32 output even under mixed_float16, so the softmax and the loss stay exact.
    return layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name=name)(x)


def build_seed(image_size: int, learning_rate: float, steps_per_epoch: int | None, epochs: int | None):
    """The tutorial's CNN, layer for layer, after its VGG16 preprocessing."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = GreyToVGG16(dtype="float32", name="vgg16_preprocess")(inputs)
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same", name="conv1")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), strides=2, name="pool1")(x)
    x = layers.Conv2D(64, (3, 3), activation="relu", padding="same", name="conv2")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), strides=2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, _softmax_head(x), name="seed")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=_metrics(),
    )
    return model


def _conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3, strides: int = 1):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,  # BatchNorm supplies the shift.
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    # Momentum 0.9, not 0.99: with ~100 steps an epoch the moving statistics must settle within one,
    # or the validation metrics (and so early stopping) see stale statistics.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_default(image_size: int, learning_rate: float, steps_per_epoch: int | None, epochs: int | None):
    """A compact VGG-style CNN for greyscale X-rays (~1.2 M parameters).

    A ResNet-style stem (5x5 stride-2 conv, then max-pooling) brings 224 px to 56 px cheaply; four
    blocks of two 3x3 conv+BN+ReLU (32-64-128-256 filters) with max-pooling between them; global
    average pooling keeps the head small, so the model does not memorise the few thousand training
    images; dropout before the softmax. 'same' pooling lets sizes down to its minimum (`MODEL_SPECS`) work.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = PerImageStandardization(dtype="float32", name="standardize")(inputs)
    x = _conv_bn_relu(x, 32, "stem", kernel_size=5, strides=2)
    x = layers.MaxPool2D(2, padding="same", name="stem_pool")(x)
    for index, filters in enumerate((32, 64, 128, 256), start=1):
        x = _conv_bn_relu(x, filters, f"block{index}a")
        x = _conv_bn_relu(x, filters, f"block{index}b")
        if filters != 256:
            x = layers.MaxPool2D(2, padding="same", name=f"block{index}_pool")(x)
        if filters >= 128:
            x = layers.SpatialDropout2D(0.1, name=f"block{index}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="head_dropout")(x)
    model = keras.Model(inputs, _softmax_head(x), name="default")
    _compile_with_warmup_cosine(model, learning_rate, steps_per_epoch, epochs)
    return model


def build_mobilenet(image_size: int, learning_rate: float, steps_per_epoch: int | None, epochs: int | None):
    """MobileNetV3-Small (~0.94 M parameters without its ImageNet top) on the grey image as RGB.

    Random weights (`weights=None`, nothing is downloaded); `build_model(backbone_weights=...)` loads
    a user-supplied file into the backbone. Global average pooling, dropout, then the softmax head.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = GreyToRGB(dtype="float32", name="grey_to_rgb")(inputs)
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 3),
        include_top=False,
        weights=None,
        include_preprocessing=True,  # its own Rescaling: 0..255 -> -1..1
        name=BACKBONE_LAYER,
    )
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="head_dropout")(x)
    model = keras.Model(inputs, _softmax_head(x), name="mobilenet")
    _compile_with_warmup_cosine(model, learning_rate, steps_per_epoch, epochs)
    return model


def _compile_with_warmup_cosine(
    model: keras.Model, learning_rate: float, steps_per_epoch: int | None, epochs: int | None
) -> None:
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=_warmup_cosine(learning_rate, steps_per_epoch, epochs),
            weight_decay=1e-4,
            clipnorm=1.0,
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.05),
        metrics=_metrics(),
    )


def _warmup_cosine(learning_rate: float, steps_per_epoch: int | None, epochs: int | None):
    """Linear warm-up over the first epoch (at most a fifth of training), then cosine decay to 1 %.

    Without a known length (building a model outside training) the rate stays constant.
    """
    if not steps_per_epoch or not epochs:
        return learning_rate
    total_steps = steps_per_epoch * epochs
    warmup_steps = max(1, min(steps_per_epoch, total_steps // 5))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 100,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.01,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def _check_name(name: str) -> None:
    if name not in MODEL_SPECS:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


def build_model(
    name: str,
    image_size: int,
    *,
    learning_rate: float | None = None,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    backbone_weights: str | Path | None = None,
) -> keras.Model:
    """A compiled model `name` for (image_size, image_size, 1) inputs.

    `learning_rate=None` uses the model's own default. `steps_per_epoch` and `epochs` give the
    default model its warm-up + cosine schedule; build inside a distribution strategy's scope if any.
    `backbone_weights`: a weights file (e.g. `backbone.save_weights("b.weights.h5")`) loaded into the
    backbone of a pretrainable model (`ModelSpec.pretrainable`).
    """
    _check_name(name)
    spec = MODEL_SPECS[name]
    if image_size < spec.min_image_size:
        raise ModelError(
            f"image_size must be at least {spec.min_image_size} pixels for {name!r}, got {image_size}"
        )
    rate = spec.learning_rate if learning_rate is None else learning_rate
    if rate <= 0:
        raise ModelError(f"learning_rate must be positive, got {rate}")
    if backbone_weights is not None and not spec.pretrainable:
        raise ModelError(
            f"model {name!r} has no pretrained backbone; backbone weights work with: {', '.join(PRETRAINABLE_MODELS)}"
        )
    model = globals()[spec.builder](image_size, rate, steps_per_epoch, epochs)
    if backbone_weights is not None:
        _load_backbone_weights(model.get_layer(BACKBONE_LAYER), Path(backbone_weights))
    return model


def _load_backbone_weights(backbone: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"backbone weights file not found: {path}")
    try:
        backbone.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise ModelError(
            f"cannot load backbone weights {path} into {backbone.name!r} "
            f"(expected a Keras .weights.h5 file saved from the same backbone): {error}"
        ) from error


def build_augmentation(name: str, *, seed: int | None = None) -> keras.Sequential | None:
    """Training-time augmentation for model `name` (None: the model trains on unaltered images).

    Small rotations, shifts and zooms mimic patient positioning; contrast and brightness mimic
    exposure; for `default`, `AcquisitionShift` mimics another site's scanner (it raised the AUC under
    a held-out acquisition family, docs/model.md "Shift proxy"). No horizontal flip: the heart is on the left, and a flipped chest is not a real chest.
    Works on float 0..255 batches of shape (N, S, S, 1).
    """
    _check_name(name)
    if name == "seed":  # The tutorial trained without augmentation.
        return None

    def layer_seed(offset: int) -> int | None:
        return None if seed is None else seed + offset

    # float32 regardless of the mixed-precision policy: this runs in the tf.data pipeline.
    return keras.Sequential(
        [
            layers.RandomRotation(0.03, fill_mode="constant", seed=layer_seed(1), dtype="float32"),
            layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=layer_seed(2), dtype="float32"),
            layers.RandomZoom(0.1, fill_mode="constant", seed=layer_seed(3), dtype="float32"),
            layers.RandomContrast(0.4, value_range=(0, 255), seed=layer_seed(4), dtype="float32"),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=layer_seed(5), dtype="float32"),
            *([AcquisitionShift(seed=layer_seed(6), dtype="float32")] if name == "default" else []),
        ],
        name=f"{name}_augmentation",
    )
