"""The typed configuration of a retraining run; its fields are the `retrain` flow's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxr import REGISTERED_MODEL_NAME

ModelName = Literal["seed", "default", "mobilenet"]
# Architectures with a backbone (cxr.models.BACKBONE_LAYER) that can start from a user-supplied weights file.
PRETRAINABLE_MODELS: tuple[str, ...] = ("mobilenet",)

# What each architecture trains with unless told otherwise: `seed` as the tutorial did; `default` at
# the size and length measured to reach the README's numbers in under 10 CPU minutes; `mobilenet`
# at MobileNetV3's smallest usual ImageNet size, shorter because a pretrained backbone converges sooner.
MODEL_DEFAULTS: dict[str, dict[str, int]] = {
    "seed": {"image_size": 224, "epochs": 10, "batch_size": 10},
    "default": {"image_size": 160, "epochs": 12, "batch_size": 32},
    "mobilenet": {"image_size": 160, "epochs": 8, "batch_size": 32},
}


class RetrainConfig(BaseModel):
    """Everything that decides what a retraining run produces (and so its cache keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(
        description="Image folder: Kaggle layout, bare NORMAL/PNEUMONIA, or flat named files"
    )
    model: ModelName = Field(
        "default",
        description="Architecture: 'seed' (the tutorial CNN), 'default' or 'mobilenet' (MobileNetV3-Small)",
    )
    backbone_weights: str | None = Field(
        None,
        description="User-supplied backbone weights file (.weights.h5); only for pretrained-capable models "
        f"({', '.join(PRETRAINABLE_MODELS)}). Nothing is ever downloaded.",
    )
    image_size: int = Field(None, ge=16, le=1024, description="Square input size (default: the model's)")
    epochs: int = Field(None, ge=1, le=500, description="Maximum epochs (default: the model's)")
    batch_size: int = Field(None, ge=1, le=4096, description="Default: the model's")
    learning_rate: float | None = Field(None, gt=0, description="None: the model's own default")
    seed: int = Field(42, description="Seed for the split, initialisation and shuffling")
    valid_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    keep_official_test: bool = Field(False, description="Use the folder's own test/ split as the test set")
    early_stopping_patience: int = Field(4, ge=1)
    min_images_per_class: int = Field(2, ge=1, description="Stop before training below this per class")
    min_image_side: int = Field(64, ge=1, description="Quarantine images smaller than this (pixels)")
    target_sensitivity: float = Field(
        0.97, gt=0, le=1, description="Validation sensitivity (95 % lower bound) the threshold must reach"
    )
    registered_model_name: str = REGISTERED_MODEL_NAME
    gate_metric: str = Field("auc", description="Champion/challenger metric on the test split")
    gate_margin: float = Field(0.0, ge=0, description="Challenger must beat the champion by this much")
    sensitivity_floor: float = Field(0.0, ge=0, le=1, description="Never promote below this sensitivity")
    trigger: Literal["manual", "nightly", "new-data"] = "manual"
    data_roots: tuple[str, ...] = Field(
        (), description="When set, data_dir must resolve inside one of these folders (event-triggered runs)"
    )

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            defaults = MODEL_DEFAULTS.get(values.get("model", "default"), {})
            values = {**values, **{k: v for k, v in defaults.items() if values.get(k) is None}}
        return values

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> RetrainConfig:
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise ValueError("valid_fraction + test_fraction must leave at least 20 % for training")
        return self

    @model_validator(mode="after")
    def _backbone_weights_need_a_backbone(self) -> RetrainConfig:
        if self.backbone_weights is not None and self.model not in PRETRAINABLE_MODELS:
            raise ValueError(
                f"backbone_weights only apply to {', '.join(PRETRAINABLE_MODELS)}, not to model {self.model!r}"
            )
        return self

    @model_validator(mode="after")
    def _data_dir_inside_roots(self) -> RetrainConfig:
        # Event payloads are untrusted: '../..' or '/etc' must not become a training folder.
        if self.data_roots:
            resolved = Path(self.data_dir).resolve()
            if not any(resolved.is_relative_to(Path(root).resolve()) for root in self.data_roots):
                raise ValueError(
                    f"data_dir {resolved} is outside the allowed data roots {list(self.data_roots)}"
                )
        return self
