"""The typed configuration of a retraining run, in one parameter group per stage; it is the `retrain` flow's
parameter, and each stage task takes its group whole."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from cxr import REGISTERED_MODEL_NAME
from cxr.config.architectures import MODEL_NAMES, MODEL_SPECS, PRETRAINABLE_MODELS
from cxr.core.task_policy import TimeoutParams
from cxr.data.imaging import MIN_IMAGE_SIDE

ModelName = Literal[*MODEL_NAMES]
DEFAULT_SEED = 42
# Names of external sets: they become metric names, artifact keys and operating-point prefixes.
EXTERNAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


class Params(BaseModel):
    """A parameter group: immutable, and unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(Params):
    min_image_side: int = Field(
        MIN_IMAGE_SIDE, ge=1, description="Quarantine images smaller than this (pixels)"
    )


class SplitParams(Params):
    """The arguments of `cxr.data.splitting.split_manifest`, by name."""

    valid_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    keep_official_test: bool = Field(False, description="Use the folder's own test/ split as the test set")
    seed: int = Field(DEFAULT_SEED, description="Seed of the group order")
    min_images_per_class: int = Field(2, ge=1, description="Stop before training below this per class")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitParams:
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise ValueError("valid_fraction + test_fraction must leave at least 20 % for training")
        return self


class ReferralTargets(Params):
    """What the images answered alone must reach; the least referral band that reaches it is fitted."""

    sensitivity: float = Field(0.95, gt=0, le=1, description="Target sensitivity on the answered images")
    specificity: float = Field(0.85, gt=0, le=1, description="Target specificity on the answered images")
    max_share: float = Field(
        0.3, ge=0, le=1, description="Refer at most this share of the calibration images"
    )
    holds: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Share of bootstrap resamples of the calibration images the band must hold in",
    )


class TrainParams(Params):
    """The model and how it trains; unset size, epochs and batch size come from its `ModelSpec`."""

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
    seed: int = Field(DEFAULT_SEED, description="Seed of initialisation, augmentation and shuffling")
    early_stopping_patience: int = Field(
        None, ge=0, description="Epochs without a better validation AUC before stopping; 0: never stop early"
    )
    target_sensitivity: float = Field(
        0.97, gt=0, le=1, description="Validation sensitivity (95 % lower bound) the threshold must reach"
    )
    referral: ReferralTargets = Field(
        ReferralTargets(),
        description="The referral band's targets, fitted on the calibration images (`cxr.model.referral_fit`)",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("model", "default") in MODEL_SPECS:
            spec = MODEL_SPECS[values.get("model", "default")]
            defaults = {
                "image_size": spec.image_size,
                "epochs": spec.epochs,
                "batch_size": spec.batch_size,
                "early_stopping_patience": spec.early_stopping_patience,
            }
            values = {**values, **{k: v for k, v in defaults.items() if values.get(k) is None}}
        return values

    @model_validator(mode="after")
    def _backbone_weights_need_a_backbone(self) -> TrainParams:
        if self.backbone_weights is not None and not MODEL_SPECS[self.model].pretrainable:
            raise ValueError(
                f"backbone_weights only apply to {', '.join(PRETRAINABLE_MODELS)}, not to model {self.model!r}"
            )
        return self


class GateParams(Params):
    """When a challenger replaces the champion: better `metric` by `margin`, sensitivity above the floor."""

    metric: str = Field("auc", description="A test metric where higher is better")
    margin: float = Field(0.0, ge=0, description="Challenger must beat the champion by this much")
    sensitivity_floor: float = Field(0.0, ge=0, le=1, description="Never promote below this sensitivity")
    external_auc_margin: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Refuse a challenger whose AUC on an external set is this much below the champion's",
    )
    external_coverage_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Refuse a challenger that answers alone, at the referral targets, this much less of an "
        "external set than the champion",
    )
    require_approval: bool = Field(
        False, description="A challenger that passes waits in the Prefect dashboard for a person's sign-off"
    )
    approval_timeout_s: float = Field(
        3600,
        gt=0,
        description="No answer within this many seconds: not promoted (keep below timeouts.flow_s)",
    )


SETS_JSON_SCHEMA = {
    "anyOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "string"}]
}


class ExternalParams(Params):
    """Labelled folders from other sites, scored (challenger and champion) in every run and never trained on."""

    # A deployment passes the sets as one `NAME=DIR,...` text (an environment variable), and Prefect's server
    # checks deployment parameters against this schema, so it must admit that text too.
    sets: Annotated[dict[str, str], WithJsonSchema(SETS_JSON_SCHEMA)] = Field(
        default_factory=dict,
        description="NAME -> folder (or `NAME=DIR,...` text); NAME: letters, digits, _ and -",
    )
    calibrate_on: str | None = Field(
        None, description="Make this set's `NAME:sensitivity-0.95` point the registered model's default"
    )

    @field_validator("sets", mode="before")
    @classmethod
    def _sets_from_text(cls, value: Any) -> Any:
        """`NAME=DIR` items, as a list or one comma-separated text (a deployment's environment variable)."""
        if isinstance(value, str):
            value = [item for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            return dict(external_set(item) for item in value)
        return value

    @model_validator(mode="after")
    def _names_and_calibration(self) -> ExternalParams:
        for name in self.sets:
            if not EXTERNAL_NAME.fullmatch(name):
                raise ValueError(f"external set name {name!r}: use letters, digits, _ and - (at most 40)")
        if self.calibrate_on is not None and self.calibrate_on not in self.sets:
            raise ValueError(
                f"calibrate_on {self.calibrate_on!r} is not an external set ({', '.join(self.sets) or 'none'})"
            )
        return self


def external_set(item: str) -> tuple[str, str]:
    """`NAME=DIR` -> (NAME, absolute DIR)."""
    name, separator, folder = item.strip().partition("=")
    if not separator or not name or not folder:
        raise ValueError(f"external set {item!r}: expected NAME=DIR")
    return name.strip(), str(Path(folder.strip()).resolve())


class DomainParams(Params):
    """The domain score (`cxr.evaluation.domain`): its threshold, and when new data counts as drift."""

    quantile: float = Field(
        0.985,
        gt=0.5,
        lt=1,
        description="Threshold: this quantile of the calibration images' domain scores (about 1 - quantile of "
        "images like the training ones are flagged)",
    )
    fit_images: int = Field(
        2000,
        ge=10,
        description="At most this many training images (a seeded sample) fit the score; as many other training "
        "images and at most this many of the validation and of the test split (seeded samples) calibrate and check it",
    )
    drift_share: float = Field(
        0.1, ge=0, le=1, description="Alert when more than this share of a run's new images is out of domain"
    )


class RetrainConfig(Params):
    """Everything that decides what a retraining run produces (and so its cache keys)."""

    data_dir: str = Field(
        description="Image folder: Kaggle layout, bare NORMAL/PNEUMONIA, or flat named files"
    )
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()
    domain: DomainParams = DomainParams()
    external: ExternalParams = ExternalParams()
    timeouts: TimeoutParams = Field(TimeoutParams(), description="Limits only: they decide no result")
    registered_model_name: str = REGISTERED_MODEL_NAME
    trigger: Literal["manual", "nightly", "new-data"] = "manual"
    data_roots: tuple[str, ...] = Field(
        (), description="When set, data_dir must resolve inside one of these folders (event-triggered runs)"
    )

    def lineage_params(self) -> dict[str, Any]:
        """What decides the data and the model, as flat `<group>.<field>` values (a registered version's lineage)."""
        return {
            f"{group}.{name}": value
            for group in ("split", "train")
            for name, value in getattr(self, group).model_dump(mode="json").items()
        }

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
