"""A registry per test and registrations of brightness models into it (`cxr.registry.registration`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr.config.params import GateParams
from cxr.core import mlflow_store
from cxr.core.atomic_files import sha256_file
from cxr.evaluation.evaluate import evaluate_predictions, score_images, score_model
from cxr.model.training import TrainResult
from cxr.registry.registration import register_model
from tests.helpers.toy_models import SIZE, bright_dark_images, brightness_model, save_model

NAME = "cxr-test"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty sqlite store: creating one takes seconds, copying it milliseconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow_store.client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, empty_store) -> str:
    """A fresh registry per test."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def test_split():
    return bright_dark_images(40, seed=1)


def trained(tmp_path: Path, gain: float, threshold: float = 0.5, tag: str = "m"):
    """The TrainResult of a saved brightness model (the same file on a second call), with TensorBoard logs."""
    model = brightness_model(gain)
    path = tmp_path / f"{tag}-{gain}-{threshold}" / "model.keras"
    if not path.exists():
        save_model(model, path.parent, threshold)
        (path.parent / "tensorboard" / "train").mkdir(parents=True)
        (path.parent / "tensorboard" / "train" / "events.out.tfevents.1").write_bytes(b"events")
    return TrainResult(
        model_path=str(path),
        model_sha256=sha256_file(path),
        metadata_path=str(path.with_name("model.json")),
        model_name="tiny",
        image_size=SIZE,
        threshold=threshold,
        threshold_rule="fixed for the test",
        epochs_run=2,
        best_epoch=2,
        resumed_from_epoch=0,
        device={"kind": "cpu"},
        history={"loss": [0.7, 0.5], "val_auc": [0.8, 0.9]},
        train_seconds=1.5,
        images_per_second=10.0,
        valid_metrics={"auc": 0.9},
        tensorboard_dir=str(path.parent / "tensorboard"),
        operating_points={"fixed": {"threshold": threshold, "sensitivity": 0.9, "specificity": 0.8}},
        default_operating_point="fixed",
    ), model


def register(tmp_path, tracking_uri, test_split, gain, *, threshold=0.5, gate=None, tag="m", external=None):
    images, labels = test_split
    train, model = trained(tmp_path, gain, threshold, tag)
    evaluation = evaluate_predictions(
        labels == 0,
        score_images(model, {"image_size": SIZE, "threshold": threshold}, images).p_pneumonia,
        threshold=threshold,
        split="test",
        model_sha256=train.model_sha256,
        out_dir=tmp_path / f"report-{tag}-{gain}-{threshold}",
    )
    return register_model(
        train,
        evaluation,
        lineage={
            "data_digest": "d" * 16,
            "config_digest": "c" * 16,
            "code_version": "v1",
            "seed": 1,
            "data_dir": "/data/xrays",
            "split_counts": {
                "train": {"pneumonia": 30, "normal": 10},
                "test": {"pneumonia": 20, "normal": 20},
            },
        },
        registered_model_name=NAME,
        tracking_uri=tracking_uri,
        gate=gate or GateParams(),
        champion_scorer=lambda uri: score_model(uri, images, labels, tracking_uri),
        external=external,
    )
