"""RetrainConfig: the flow's parameters and their checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr.config import RetrainConfig


def test_defaults_are_the_strong_model_at_its_own_size():
    config = RetrainConfig(data_dir="/data")
    assert (config.model, config.image_size, config.epochs, config.trigger) == ("default", 160, 12, "manual")


def test_seed_defaults_are_the_tutorials_and_explicit_values_win():
    seed = RetrainConfig(data_dir="/data", model="seed")
    assert (seed.image_size, seed.epochs, seed.batch_size) == (224, 10, 10)
    assert RetrainConfig(data_dir="/data", model="seed", image_size=64).image_size == 64
    # Round trip through the flow's JSON parameters keeps the resolved values.
    assert RetrainConfig.model_validate(seed.model_dump(mode="json")) == seed


def test_fractions_must_leave_training_data():
    with pytest.raises(ValidationError, match="at least 20 %"):
        RetrainConfig(data_dir="/data", valid_fraction=0.4, test_fraction=0.45)


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
        RetrainConfig(data_dir="/data", model="resnet9000")
    with pytest.raises(ValidationError):
        RetrainConfig(data_dir="/data", epoch=3)
