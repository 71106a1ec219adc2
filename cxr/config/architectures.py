"""One table of what each model architecture is and trains with; config, CLI and `cxr.model.networks` read it.

Kept free of Keras so that the config and the CLI can read it without loading TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: its builder in `cxr.model.networks` and the values it trains with unless told otherwise."""

    builder: str  # name of the function in `cxr.model.networks` that builds and compiles it
    image_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    # Epochs without a better validation AUC before training stops and keeps its best epoch; 0 runs the whole
    # schedule and keeps the last weights (a cosine schedule ends at its lowest learning rate).
    early_stopping_patience: int
    min_image_size: int = 16  # the smallest input it can downsample without reaching zero size
    pretrainable: bool = False  # has a backbone that can start from a user-supplied weights file


# `seed` as the tutorial did; `default` at the size and length measured to reach docs/model.md's numbers in
# under 10 CPU minutes; `mobilenet` at MobileNetV3's smallest usual ImageNet size, shorter because a
# pretrained backbone converges sooner (and MobileNetV3 refuses inputs below 32 pixels).
MODEL_SPECS: dict[str, ModelSpec] = {
    "seed": ModelSpec(
        "build_seed", image_size=224, epochs=10, batch_size=10, learning_rate=1e-4, early_stopping_patience=4
    ),
    "default": ModelSpec(
        "build_default",
        image_size=160,
        epochs=12,
        batch_size=32,
        learning_rate=1e-3,
        early_stopping_patience=4,
    ),
    "mobilenet": ModelSpec(
        "build_mobilenet",
        image_size=160,
        epochs=8,
        batch_size=32,
        learning_rate=1e-3,
        early_stopping_patience=4,
        min_image_size=32,
        pretrainable=True,
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)
PRETRAINABLE_MODELS: tuple[str, ...] = tuple(name for name, spec in MODEL_SPECS.items() if spec.pretrainable)
