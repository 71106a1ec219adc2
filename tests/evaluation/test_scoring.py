"""One scorer at the joins: the threshold in force, the pixels each model is scored on, the pneumonia output,
`cxr evaluate`'s smallest side and its decisions, all as serving (`cxr predict`, the pyfunc) has them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.evaluation.evaluate import champion_scorer_for, predict_split, score_model
from cxr.evaluation.evaluate_folder import evaluate_folder, labelled_batches
from cxr.evaluation.predicting import score_files
from cxr.model.loading import load_model_with_metadata
from cxr.model.operating_points import threshold_in_force
from cxr.model.referral import decide, decision_counts
from tests.helpers.toy_models import (
    LABELLED_SIDE,
    SIZE,
    blob_image,
    bright_dark_images,
    brightness_model,
    labelled_folder,
    save_model,
    write_blob_model,
    write_png,
)

# The single `threshold` disagrees with the default point's: every scorer must read the point's.
STALE_THRESHOLD = {
    "threshold": 0.99,
    "operating_points": {"site:sensitivity-0.95": {"threshold": 0.5}, "strict": {"threshold": 0.99}},
    "default_operating_point": "site:sensitivity-0.95",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_blob_model(tmp_path_factory.mktemp("model"))


def with_metadata(model_dir: Path, folder: Path, **changes) -> Path:
    shutil.copytree(model_dir, folder)
    metadata = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**metadata, **changes}))
    return folder


def test_the_threshold_in_force_is_the_default_points():
    assert threshold_in_force(STALE_THRESHOLD) == 0.5
    assert threshold_in_force({"threshold": 0.3}) == 0.3  # a model saved with one threshold


def test_the_gates_scorers_use_the_threshold_in_force(tmp_path):
    """Checked: before, `score_model` and the champion scorer read the stale single `threshold` (0.99)."""
    images, labels = bright_dark_images(40)
    model_path = save_model(brightness_model(40.0), tmp_path / "model")
    metadata = json.loads(model_path.with_name("model.json").read_text())
    model_path.with_name("model.json").write_text(json.dumps({**metadata, **STALE_THRESHOLD}))
    tracking_uri = f"sqlite:///{tmp_path / 'unused.db'}"
    assert score_model(model_path, images, labels, tracking_uri)["threshold"] == 0.5
    from cxr.data.batches import write_batches

    batches = write_batches(tmp_path / "batches", {"test": (images, labels)})
    assert champion_scorer_for(batches, tracking_uri)(str(model_path))["threshold"] == 0.5


def test_a_model_of_another_size_is_scored_on_the_pixels_serving_decodes(model_dir, tmp_path):
    """Shards at 64 px, a 32 px model: its probabilities are those `cxr predict` gives for the same files.
    Checked: before, the shards were resized by TensorFlow and the blob images differed by up to 0.003."""
    folder = labelled_folder(tmp_path / "data", pneumonia=6, normal=4)
    network, metadata = load_model_with_metadata(model_dir)
    with labelled_batches(folder, LABELLED_SIDE, 0) as (_, batches):
        assert batches.image_size == 2 * SIZE
        from cxr.data.split_images import split_paths

        paths = split_paths(batches, "test")
        prob, is_pneumonia = predict_split(network, batches, "test")
    served = score_files(network, metadata, [Path(path) for path in paths])
    np.testing.assert_allclose(prob, served["probability"].to_numpy(), atol=1e-6)
    assert list(is_pneumonia) == ["PNEUMONIA" in path for path in paths]


def test_the_pneumonia_output_is_read_from_the_models_classes(model_dir, tmp_path):
    """A model saved with its classes the other way round: `cxr predict` reads its second output, as the
    pyfunc does. Checked: before, `cxr predict` read the first output whatever the classes."""
    swapped = with_metadata(model_dir, tmp_path / "swapped", classes=["normal", "pneumonia"])
    image = write_png(tmp_path / "blob.png", blob_image(SIZE, blob=True, corner=(8, 8)))
    as_saved = score_files(*load_model_with_metadata(model_dir), [image])["probability"][0]
    other_way = score_files(*load_model_with_metadata(swapped), [image])["probability"][0]
    assert other_way == pytest.approx(1 - as_saved, abs=1e-6)


def test_cxr_evaluate_uses_the_models_smallest_side_and_reports_decisions(model_dir, tmp_path):
    """Files of 48 px: scored for a model whose run accepted 40 px and up, refused (too_small) for one that
    accepted 56 px and up, as serving does. Checked: before, `cxr evaluate` refused every file under 64 px."""
    folder = labelled_folder(tmp_path / "data", pneumonia=4, normal=4)
    write_png(folder / "PNEUMONIA" / "person9_bacteria_9.png", blob_image(48, blob=True, corner=(20, 8)))
    write_png(folder / "NORMAL" / "IM-0099-0001.png", blob_image(48, blob=False))
    lenient = evaluate_folder(str(with_metadata(model_dir, tmp_path / "lenient", min_image_side=40)), folder)
    strict = evaluate_folder(str(with_metadata(model_dir, tmp_path / "strict", min_image_side=56)), folder)
    assert (lenient["n"], lenient["quarantined"]) == (10, 0)
    assert (strict["n"], strict["quarantined_by_reason"]) == (8, {"too_small": 2})
    # Every image's decision: without a domain score or a band, the label.
    assert lenient["decisions"] == {"pneumonia": 5, "normal": 5}
    table = pd.read_csv(lenient["predictions"])
    assert len(table) == 10 and (table["decision"] == table["label"]).all()
    assert (table["label"] == table["true_label"]).all() and table["probability"].equals(table["p_pneumonia"])
    assert table["path"].str.endswith(".png").all()


def test_decisions_in_their_order_of_precedence():
    band = {"low": 0.4, "high": 0.6}
    from cxr.model.referral import ReferralBand

    inside = ReferralBand(**band)
    assert decide("too_small", None, 0.5, None, inside) == "too_small"
    assert decide("ok", 0.5, 0.5, False, inside) == "out_of_domain"
    assert decide("ok", 0.5, 0.5, True, inside) == "refer"
    assert decide("ok", 0.5, 0.5, None, None) == "pneumonia"
    assert decide("ok", 0.7, 0.5, True, inside) == "pneumonia"
    assert decide("ok", 0.3, 0.5, None, inside) == "normal"
    assert decision_counts(["too_small", "refer", "normal", "normal"]) == {
        "pneumonia": 0,
        "normal": 2,
        "refer": 1,
        "too_small": 1,
    }
