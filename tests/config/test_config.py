"""RetrainConfig: the flow's parameters, in one group per stage, and their checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr.config.architectures import MODEL_SPECS
from cxr.config.params import RetrainConfig


def test_defaults_are_the_strong_model_at_its_own_size():
    config = RetrainConfig(data_dir="/data")
    assert (config.train.model, config.train.image_size, config.train.epochs) == ("default", 160, 12)
    assert config.trigger == "manual"


def test_model_defaults_come_from_the_model_spec_and_explicit_values_win():
    seed = RetrainConfig(data_dir="/data", train={"model": "seed"})
    spec = MODEL_SPECS["seed"]
    assert (seed.train.image_size, seed.train.epochs, seed.train.batch_size) == (224, 10, 10)
    assert (spec.image_size, spec.epochs, spec.batch_size) == (224, 10, 10)
    assert RetrainConfig(data_dir="/data", train={"model": "seed", "image_size": 64}).train.image_size == 64
    assert seed.train.early_stopping_patience == spec.early_stopping_patience
    no_early_stop = RetrainConfig(data_dir="/data", train={"model": "seed", "early_stopping_patience": 0})
    assert no_early_stop.train.early_stopping_patience == 0
    # Round trip through the flow's JSON parameters keeps the resolved values.
    assert RetrainConfig.model_validate(seed.model_dump(mode="json")) == seed


def test_lineage_params_cover_the_split_and_train_groups():
    params = RetrainConfig(data_dir="/data", split={"seed": 3}).lineage_params()
    assert params["split.seed"] == 3 and params["train.seed"] == 42 and params["train.model"] == "default"
    assert not [key for key in params if not key.startswith(("split.", "train."))]


def test_fractions_must_leave_training_data():
    with pytest.raises(ValidationError, match="at least 20 %"):
        RetrainConfig(data_dir="/data", split={"valid_fraction": 0.4, "test_fraction": 0.45})


@pytest.mark.parametrize("escape", ["/etc", "{root}/../../etc", "{root}/inbox/../../outside"])
def test_data_dir_confined_to_roots(tmp_path, escape):
    root = tmp_path / "data"
    (root / "inbox").mkdir(parents=True)
    with pytest.raises(ValidationError, match="outside the allowed data roots"):
        RetrainConfig(data_dir=escape.format(root=root), data_roots=(str(root),))


def test_data_dir_inside_root_accepted(tmp_path):
    root = tmp_path / "data"
    (root / "inbox").mkdir(parents=True)
    config = RetrainConfig(data_dir=str(root / "inbox"), data_roots=(str(root),))
    assert config.data_dir.endswith("inbox")


def test_symlink_escaping_root_is_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    with pytest.raises(ValidationError, match="outside"):
        RetrainConfig(data_dir=str(root / "link"), data_roots=(str(root),))


def test_unknown_fields_and_models_rejected():
    with pytest.raises(ValidationError):
        RetrainConfig(data_dir="/data", train={"model": "resnet9000"})
    with pytest.raises(ValidationError):
        RetrainConfig(data_dir="/data", train={"epoch": 3})
    with pytest.raises(ValidationError):
        RetrainConfig(data_dir="/data", epochs=3)  # parameters live in their stage's group
