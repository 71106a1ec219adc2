"""Batch prediction, Grad-CAM and the `predict` flow, with the hand-weighted 'bright blob' model
(tests.helpers.toy_models), whose labels and Grad-CAM map have a known right answer without training."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers.domain_cases import add_domain_score, blob_scenes
from tests.helpers.image_files import png_declaring
from tests.helpers.prefect_artifacts import artifact_data
from tests.helpers.toy_models import SIZE, THRESHOLD, blob_image, blob_model, write_blob_model, write_png


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_blob_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two images with a blob, two without (one in a sub-folder) and four files that are not images."""
    folder = tmp_path / "inbox"
    write_png(folder / "blob_a.png", blob_image(48, blob=True, corner=(4, 30)))
    write_png(folder / "nested" / "blob_b.png", blob_image(48, blob=True, corner=(30, 4)))
    write_png(folder / "plain_a.png", blob_image(48, blob=False))
    write_png(folder / "nested" / "plain_b.png", blob_image(40, blob=False))
    (folder / "page.png").write_text("<!doctype html><html><body>Not found</body></html>")
    (folder / "empty.png").write_bytes(b"")
    png_declaring(folder / "bomb.png", 100_000, 100_000)
    write_png(folder / "huge.png", np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    return folder


def score(model_dir: Path, paths: list[Path], **options) -> pd.DataFrame:
    from cxr.evaluation.predicting import score_files
    from cxr.model.loading import load_model_with_metadata

    model, metadata = load_model_with_metadata(model_dir)
    return score_files(model, metadata, paths, **options).set_index("path")


def test_score_files_labels_good_images_and_reports_bad_ones(model_dir, mixed_folder, tmp_path):
    missing = tmp_path / "nowhere.png"
    frame = score(model_dir, [mixed_folder, missing], max_file_bytes=10_000)

    assert len(frame) == 9
    status = {Path(path).name: value for path, value in frame["status"].items()}
    assert status == {
        "blob_a.png": "ok",
        "blob_b.png": "ok",
        "plain_a.png": "ok",
        "plain_b.png": "ok",
        "page.png": "not_an_image",
        "empty.png": "empty_file",
        "bomb.png": "decompression_bomb",
        "huge.png": "file_too_large",
        "nowhere.png": "missing",
    }
    scored = frame[frame["status"] == "ok"]
    assert scored["probability"].between(0, 1).all()
    assert ((scored["probability"] >= THRESHOLD) == (scored["label"] == "pneumonia")).all()
    labels = {Path(path).stem: label for path, label in scored["label"].items()}
    assert labels == {"blob_a": "pneumonia", "blob_b": "pneumonia", "plain_a": "normal", "plain_b": "normal"}
    failed = frame[frame["status"] != "ok"]
    assert failed["probability"].isna().all() and failed["label"].isna().all()
    assert (failed["detail"].str.len() > 0).all()


def test_images_below_the_models_minimum_side_are_refused_as_too_small(model_dir, mixed_folder, tmp_path):
    """A model whose run accepted images of at least 44 px refuses the 40 px one instead of stretching it."""
    import shutil

    from cxr.evaluation.domain import MIN_SIDE_KEY

    strict = tmp_path / "strict-model"
    shutil.copytree(model_dir, strict)
    metadata = json.loads((strict / "model.json").read_text())
    (strict / "model.json").write_text(json.dumps({**metadata, MIN_SIDE_KEY: 44}))
    frame = score(strict, [mixed_folder / "plain_a.png", mixed_folder / "nested" / "plain_b.png"])
    assert frame["status"].tolist() == ["ok", "too_small"]
    assert "40x40" in frame["detail"].iloc[1] and np.isnan(frame["probability"].iloc[1])


def test_an_image_inside_the_referral_band_is_referred(model_dir, mixed_folder, tmp_path):
    """A band written into the model's metadata refers the images whose P(pneumonia) falls inside it."""
    import shutil

    banded = tmp_path / "banded-model"
    shutil.copytree(model_dir, banded)
    plain = [mixed_folder / "blob_a.png", mixed_folder / "plain_a.png"]
    before = score(banded, plain)
    p_blob = float(before["probability"].iloc[0])
    metadata = json.loads((banded / "model.json").read_text())
    band = {"low": THRESHOLD - 0.01, "high": p_blob + 1e-6, "fitted_on": "test"}
    (banded / "model.json").write_text(json.dumps({**metadata, "referral": band}))
    after = score(banded, plain)
    assert before["decision"].tolist() == ["pneumonia", "normal"]
    assert after["decision"].tolist() == ["refer", "normal"]
    # The label and probability stay: only the one field to read alone changes.
    assert after["label"].tolist() == before["label"].tolist()
    assert after["probability"].tolist() == before["probability"].tolist()


def test_score_files_writes_one_overlay_per_scored_image(model_dir, mixed_folder, tmp_path):
    frame = score(model_dir, [mixed_folder], heatmaps_dir=tmp_path / "heat")

    overlays = frame.loc[frame["status"] == "ok", "heatmap"]
    assert len(overlays) == 5 and frame.loc[frame["status"] != "ok", "heatmap"].isna().all()
    for overlay in overlays:
        with Image.open(overlay) as image:
            assert image.format == "PNG" and image.mode == "RGB" and min(image.size) >= SIZE


def test_grad_cam_highlights_the_deciding_blob():
    from cxr.model.gradcam import grad_cam

    image = blob_image(SIZE, blob=True, corner=(0, 24))
    heat = grad_cam(blob_model(), image[..., None])

    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    blob_region, background = heat[:8, 24:], heat[16:, :16]
    assert blob_region.mean() > 0.5 > background.max()


def test_grad_cam_reaches_a_conv_layer_inside_a_nested_model():
    from cxr.model.gradcam import grad_cam, last_conv_layer

    inner = blob_model()
    inputs = keras.Input((SIZE, SIZE, 1))
    outer = keras.Model(inputs, inner(inputs))
    image = blob_image(SIZE, blob=True, corner=(20, 4))[..., None]

    assert last_conv_layer(outer) is inner.get_layer("bright")
    np.testing.assert_allclose(grad_cam(outer, image), grad_cam(inner, image), atol=1e-6)
    assert "call" not in vars(inner.get_layer("bright"))  # the temporary hook is gone


def test_grad_cam_needs_a_conv_layer():
    from cxr.core.errors import ModelError
    from cxr.model.gradcam import grad_cam

    inputs = keras.Input((SIZE, SIZE, 1))
    flat = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    with pytest.raises(ModelError, match="no Conv2D"):
        grad_cam(keras.Model(inputs, flat), blob_image(SIZE, blob=False))


def test_overlay_png_is_written_at_a_legible_size(tmp_path):
    from cxr.model.gradcam import OVERLAY_MIN_SIDE, overlay_png

    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[:8, :8] = 1.0
    out = overlay_png(
        blob_image(SIZE, blob=False), heat, tmp_path / "sub" / "overlay.png", label="pneumonia 0.9"
    )

    with Image.open(out) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (OVERLAY_MIN_SIDE, OVERLAY_MIN_SIDE, 3)
    hot, cold = pixels[40:60, 40:60].mean(axis=(0, 1)), pixels[-40:, -40:].mean(axis=(0, 1))
    assert hot[0] > cold[0] and cold[2] > cold[0]  # red where the heat is, blue where there is none


def test_predict_flow_writes_the_csv(prefect_harness, model_dir, mixed_folder, tmp_path):
    from flows.predict import predict

    out_csv = tmp_path / "out" / "predictions.csv"
    state = predict(
        paths=[str(mixed_folder)], model_uri=str(model_dir), out_csv=str(out_csv), return_state=True
    )
    summary = state.result()

    # Under the default size limit the 256 px noise image is scored too: no bright area, so 'normal'.
    assert summary["scored"] == 5 and summary["failed"] == 3
    assert summary["out_csv"] == str(out_csv.resolve()) and summary["threshold"] == THRESHOLD
    assert summary["by_label"] == {"pneumonia": 2, "normal": 3}
    assert summary["by_status"] == {"decompression_bomb": 1, "empty_file": 1, "not_an_image": 1}
    # Without a domain score or a referral band, every scored image is answered; a refusal is its own decision.
    assert summary["by_decision"] == {
        "pneumonia": 2,
        "normal": 3,
        "decompression_bomb": 1,
        "empty_file": 1,
        "not_an_image": 1,
    }
    written = pd.read_csv(out_csv)
    assert list(written.columns) == [
        "path",
        "probability",
        "label",
        "decision",
        "status",
        "detail",
        "heatmap",
        "in_domain",
        "domain_score",
        "p_pneumonia",
    ]
    assert len(written) == 8 and (written["status"] == "ok").sum() == 5
    scored = written["status"] == "ok"
    assert (written.loc[scored, "decision"] == written.loc[scored, "label"]).all()
    assert (written.loc[~scored, "decision"] == written.loc[~scored, "status"]).all()
    assert written["p_pneumonia"].equals(written["probability"])  # the pyfunc's name for the same number
    published = artifact_data(str(state.state_details.flow_run_id))
    assert [row["decision"] for row in published["predictions"]] == written["decision"].tolist()
    assert {"outcome": "decision pneumonia", "files": 2} in published["prediction-counts"]
    # A model saved without a domain score judges no image: the columns are empty, the count null.
    assert written["in_domain"].isna().all() and written["domain_score"].isna().all()
    assert summary["out_of_domain"] is None


@pytest.fixture(scope="module")
def guarded_dir(tmp_path_factory) -> Path:

    folder = write_blob_model(tmp_path_factory.mktemp("guarded"))
    add_domain_score(folder, blob_scenes(120, SIZE, seed=0), blob_scenes(60, SIZE, seed=1))
    return folder


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """One image like the model's own and three it was never meant to see."""
    folder = tmp_path / "odd"
    scene = blob_scenes(2, SIZE, seed=5)[1]  # with a blob
    write_png(folder / "usual.png", scene)
    write_png(folder / "inverted.png", 255 - scene)
    write_png(folder / "blank.png", np.full((SIZE, SIZE), 200, np.uint8))
    write_png(folder / "noise.png", np.random.default_rng(3).integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    return folder


def test_predict_flags_images_out_of_domain_and_still_answers(
    prefect_harness, guarded_dir, odd_folder, tmp_path
):
    from flows.predict import predict

    out_csv = tmp_path / "predictions.csv"
    summary = predict(
        paths=[str(odd_folder)],
        model_uri=str(guarded_dir),
        out_csv=str(out_csv),
        heatmaps_dir=str(tmp_path / "h"),
    )
    written = pd.read_csv(out_csv).set_index(pd.read_csv(out_csv)["path"].map(lambda path: Path(path).stem))
    assert written["in_domain"].to_dict() == {
        "blank": False,
        "inverted": False,
        "noise": False,
        "usual": True,
    }
    assert summary["out_of_domain"] == 3 and summary["scored"] == 4
    # Flagged images keep their probability and label, but their decision is out_of_domain: a reader of
    # `decision` alone never gets an answer for them.
    assert written["probability"].notna().all() and written["label"].notna().all()
    assert written["decision"].to_dict() == {
        "blank": "out_of_domain",
        "inverted": "out_of_domain",
        "noise": "out_of_domain",
        "usual": written.loc["usual", "label"],
    }
    assert summary["by_decision"] == {"pneumonia": 1, "normal": 0, "out_of_domain": 3}
    # Its Grad-CAM overlay says so in its name (and on the image).
    flagged_overlays = written["heatmap"].str.endswith("-out-of-domain.png")
    assert flagged_overlays.to_dict() == {"blank": True, "inverted": True, "noise": True, "usual": False}
    threshold = json.loads((guarded_dir / "model.json").read_text())["domain"]["threshold"]
    assert ((written["domain_score"] > threshold) == ~written["in_domain"].astype(bool)).all()


def test_predict_flow_reports_a_missing_model_clearly(prefect_harness, mixed_folder, tmp_path):
    from cxr.core.errors import ModelError
    from flows.predict import predict

    with pytest.raises(ModelError, match="not found"):
        predict(
            paths=[str(mixed_folder)], model_uri=str(tmp_path / "no-model"), out_csv=str(tmp_path / "p.csv")
        )


def test_predict_task_retries_io_errors_only():
    from prefect.states import Failed

    from cxr.core.errors import ModelError
    from tasks.predict import predict_files

    should_retry = predict_files.retry_condition_fn
    assert should_retry(predict_files, None, Failed(data=OSError("disk full")))
    assert not should_retry(predict_files, None, Failed(data=ModelError("no registered model")))
