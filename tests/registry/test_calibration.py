"""`cxr calibrate`: a site's labelled images add `SITE:` operating points to a registered model as a new
version (same network) that stock MLflow's pyfunc, `cxr evaluate` and `cxr predict` honour."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from cli.main import main
from cxr.core import mlflow_store
from cxr.core.atomic_files import sha256_file
from cxr.model import loading
from cxr.model.operating_points import operating_points, threshold_in_force
from cxr.registry import versions
from cxr.registry.pyfunc_logging import log_pyfunc_model
from cxr.registry.site_calibration import site_points, with_site_points
from tests.helpers.toy_models import labelled_folder, write_blob_model

NAME = "cxr-pneumonia"
POINT = "site_b:sensitivity-0.95"


@pytest.fixture
def champion(tmp_path, isolated_registry) -> Path:
    """The blob model registered as v1 and `champion` in this test's registry; returns its folder."""
    folder = write_blob_model(tmp_path / "blob")
    sha256 = sha256_file(folder / "model.keras")
    mlflow.set_tracking_uri(isolated_registry)
    mlflow.set_registry_uri(isolated_registry)
    with mlflow.start_run(experiment_id=versions.ensure_experiment(isolated_registry)):
        info = log_pyfunc_model(
            folder / "model.keras", folder / "model.json", model_sha256=sha256, name="model"
        )
    client = mlflow_store.client(isolated_registry)
    client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, source=info.model_uri, run_id=info.run_id, model_id=info.model_id, tags={"model_sha256": sha256}
    )
    versions.promote(NAME, int(version.version), "test", isolated_registry)
    return folder


def test_site_points_replace_that_sites_earlier_points_and_keep_the_default():
    p = np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9])
    y = np.array([False, False, True, False, True, True])
    points = site_points(p, y, "a", 0.95)
    assert list(points) == ["a:sensitivity-0.95", "a:balanced"]
    assert (
        points["a:sensitivity-0.95"].sensitivity == 1.0
        and 0.2 < points["a:sensitivity-0.95"].threshold < 0.35
    )
    once = with_site_points({"threshold": 0.5}, "a", points, {"n": 6}, None)
    assert set(once["operating_points"]) == {"default", "a:sensitivity-0.95", "a:balanced"}
    assert once["default_operating_point"] == "default" and once["threshold"] == 0.5
    again = with_site_points(once, "a", {"a:balanced": points["a:balanced"]}, {"n": 7}, "a:balanced")
    assert set(again["operating_points"]) == {"default", "a:balanced"}
    assert again["threshold"] == points["a:balanced"].threshold and again["site_calibrations"] == {
        "a": {"n": 7}
    }


def test_calibrate_adds_site_points_that_stock_mlflow_honours(champion, isolated_registry, tmp_path, capsys):
    site = labelled_folder(tmp_path / "site", pneumonia=6, normal=6)

    assert main(["calibrate", "--data", str(site), "--name", "site_b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert (result["model_version"], result["calibrated_from"], result["champion"]) == (2, 1, True)
    assert list(result["operating_points"]) == [POINT, "site_b:balanced"]
    assert result["default_operating_point"] == "default" and result["n"] == 12
    threshold = result["operating_points"][POINT]["threshold"]
    tags = mlflow_store.client(isolated_registry).get_model_version(NAME, "2").tags
    assert tags["calibrated_from"] == "1" and tags["calibration_site"] == "site_b"
    assert tags["model_sha256"] == sha256_file(champion / "model.keras")  # the same network

    images = pd.DataFrame({"image": [path.read_bytes() for path in sorted(site.rglob("*.png"))]})
    truth = ["normal"] * 6 + ["pneumonia"] * 6  # NORMAL/ sorts first
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    answer = pyfunc.predict(images, params={"operating_point": POINT})
    assert set(answer["operating_point"]) == {POINT} and set(answer["threshold"]) == {threshold}
    assert answer["label"].tolist() == truth
    assert set(pyfunc.predict(images)["operating_point"]) == {"default"}  # the default is left as it was
    with pytest.raises(Exception, match="unknown operating point"):  # v1's files are untouched
        mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(images, params={"operating_point": POINT})

    assert main(["evaluate", "--data", str(site), "--operating-point", POINT, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["operating_point"] == POINT and scored["metrics"]["threshold"] == threshold
    assert scored["metrics"]["accuracy"] == 1.0


def test_calibrate_refuses_one_class_folders_and_model_files(champion, tmp_path, capsys):
    one_class = labelled_folder(tmp_path / "one", pneumonia=4, normal=0)
    assert main(["calibrate", "--data", str(one_class), "--name", "s"]) == 2
    assert "no usable normal images" in capsys.readouterr().err
    two = labelled_folder(tmp_path / "two", pneumonia=2, normal=2)
    assert main(["calibrate", "--data", str(two), "--name", "s", "--model", str(champion)]) == 2
    assert "give a models:/ URI" in capsys.readouterr().err
    assert main(["calibrate", "--data", str(two), "--name", "s:x"]) == 2
    assert "site name 's:x'" in capsys.readouterr().err
    assert main(["calibrate", "--data", str(two), "--name", "s", "--target-sensitivity", "1.5"]) == 2
    assert "target sensitivity 1.5 must be in (0, 1]" in capsys.readouterr().err


def test_recalibrating_a_site_at_another_target_keeps_the_point_the_default_names():
    """Checked: before, the second call dropped `a:sensitivity-0.95` while the default still named it, and
    reading the points raised "default operating point 'a:sensitivity-0.95' is not one of ..."."""
    p = np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9])
    y = np.array([False, False, True, False, True, True])
    first = site_points(p, y, "a", 0.95)
    made_default = with_site_points({"threshold": 0.5}, "a", first, {"n": 6}, "a:sensitivity-0.95")
    second = site_points(p, y, "a", 0.9)
    again = with_site_points(made_default, "a", second, {"n": 6}, None)
    points, default = operating_points(again)
    assert default == "a:sensitivity-0.95" and set(points) >= {"a:sensitivity-0.9", "a:balanced", default}
    assert again["threshold"] == points[default]["threshold"] == first[default].threshold
    assert threshold_in_force(again) == again["threshold"]


def test_recalibrating_the_default_point_moves_its_referral_band_with_its_threshold():
    """Checked: before, recalibrating a site at the target of the point the default names (without
    `--make-default`) replaced that point, so the threshold in force moved, but kept the band fitted around the
    old threshold: the new version referred images around a threshold it no longer used."""
    y = np.array([False, False, True, False, True, True])
    first = site_points(np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9]), y, "a", 0.95)
    second = site_points(np.array([0.05, 0.5, 0.55, 0.6, 0.7, 0.9]), y, "a", 0.95)
    assert first["a:sensitivity-0.95"].threshold != second["a:sensitivity-0.95"].threshold

    def record(points: dict) -> dict:
        threshold = points["a:sensitivity-0.95"].threshold
        return {
            "n": 6,
            "referral": {"low": threshold - 0.01, "high": threshold + 0.01, "threshold": threshold},
        }

    made_default = with_site_points({"threshold": 0.5}, "a", first, record(first), "a:sensitivity-0.95")
    again = with_site_points(made_default, "a", second, record(second), None)
    assert again["default_operating_point"] == "a:sensitivity-0.95"
    assert again["referral"]["threshold"] == again["threshold"] == threshold_in_force(again)


def test_calibrate_at_another_target_without_make_default_then_predict_and_evaluate_use_the_default(
    champion, isolated_registry, tmp_path, capsys
):
    site = labelled_folder(tmp_path / "site", pneumonia=6, normal=6)
    base = ["calibrate", "--data", str(site), "--name", "site_b", "--json"]
    assert main([*base, "--target-sensitivity", "0.95", "--make-default"]) == 0
    capsys.readouterr()
    assert main([*base, "--target-sensitivity", "0.9"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["default_operating_point"] == POINT and result["model_version"] == 3

    version = mlflow_store.client(isolated_registry).get_model_version(NAME, "3")
    metadata = json.loads(
        Path(loading.resolve_model(f"models:/{NAME}/3")).with_name("model.json").read_text()
    )
    assert metadata["threshold"] == metadata["operating_points"][POINT]["threshold"]
    assert float(version.tags["threshold"]) == pytest.approx(metadata["threshold"])

    assert main(["predict", str(site), "--out", str(tmp_path / "p.csv"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (predicted["operating_point"], predicted["threshold"]) == (POINT, metadata["threshold"])
    assert main(["evaluate", "--data", str(site), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (scored["operating_point"], scored["metrics"]["threshold"]) == (POINT, metadata["threshold"])
    assert sum(scored["decisions"].values()) == scored["n"] == 12


def test_make_default_refits_the_referral_band_around_the_sites_threshold(champion, tmp_path, capsys):
    site = labelled_folder(tmp_path / "site", pneumonia=8, normal=8)

    args = ["calibrate", "--data", str(site), "--name", "site_b", "--make-default", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    band = result["referral"]
    threshold = result["operating_points"][POINT]["threshold"]
    assert result["default_operating_point"] == POINT and band["threshold"] == threshold
    assert band["low"] <= threshold <= band["high"] and band["fitted_on"] == "site site_b"
    assert band["n"] == 16 and (band["target_sensitivity"], band["target_specificity"]) == (0.95, 0.85)
    stored = loading.resolve_model(result["model_uri"]).with_name("model.json")
    assert json.loads(stored.read_text())["referral"] == band
