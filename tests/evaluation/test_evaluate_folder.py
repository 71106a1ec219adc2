"""`cxr evaluate`'s engine: a model scored on a whole labelled folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr.core.errors import DataError
from cxr.evaluation.evaluate_folder import evaluate_folder
from tests.helpers.image_files import png_declaring
from tests.helpers.toy_models import labelled_folder, write_blob_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_blob_model(tmp_path_factory.mktemp("model"))


def test_evaluate_folder_scores_every_accepted_image(model_dir, tmp_path):
    folder = labelled_folder(tmp_path / "data", pneumonia=6, normal=5)
    png_declaring(folder / "NORMAL" / "bomb.png", 100_000, 100_000)

    result = evaluate_folder(str(model_dir), folder)

    assert result["model"] == str(model_dir)
    assert result["n"] == 11 and result["quarantined"] == 1
    assert result["quarantined_by_reason"] == {"decompression_bomb": 1}
    metrics = result["metrics"]
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"):
        assert 0.0 <= metrics[name] <= 1.0
    # The blob model separates these images perfectly at its stored threshold.
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == 1.0 and metrics["threshold"] == 0.5
    assert metrics["confusion"] == [[6, 0], [0, 5]]
    assert set(result["ci"]) >= {"accuracy", "auc"}
    assert Path(result["report"]).is_file() and "bomb.png" in Path(result["quarantine"]).read_text()


def test_evaluate_folder_scores_duplicates_and_reports_them(model_dir, tmp_path):
    """A labelled folder is scored whole: copies are counted, not removed. Checked: before, `n` was 8 and
    both copies were quarantined as `duplicate`."""
    folder = labelled_folder(tmp_path / "data", pneumonia=4, normal=4)
    shutil.copy(folder / "NORMAL" / "IM-0000-0001.png", folder / "NORMAL" / "IM-0000-0001-copy.png")
    shutil.copy(folder / "PNEUMONIA" / "person1_bacteria_1.png", folder / "PNEUMONIA" / "person1_copy.png")

    result = evaluate_folder(str(model_dir), folder)

    assert result["n"] == 10 and result["duplicates"] == 2
    assert result["quarantined"] == 0 and result["quarantined_by_reason"] == {}
    assert result["metrics"]["confusion"] == [[5, 0], [0, 5]]


def test_evaluate_folder_needs_both_classes(model_dir, tmp_path):
    folder = labelled_folder(tmp_path / "data", pneumonia=3, normal=0)
    with pytest.raises(DataError, match="no usable normal images"):
        evaluate_folder(str(model_dir), folder)


def test_evaluate_folder_reports_a_missing_folder(model_dir, tmp_path):
    with pytest.raises(DataError, match="not found"):
        evaluate_folder(str(model_dir), tmp_path / "nowhere")


def test_two_evaluations_of_one_network_keep_their_own_reports(model_dir, tmp_path):
    """Checked: before, the report folder was named after the folder and the network file only, so the same
    network with another model.json (a calibrated version) or at another operating point overwrote the
    report, plots and predictions an earlier answer (or a cached external-set result) points at."""
    import json

    import pandas as pd

    folder = labelled_folder(tmp_path / "data", pneumonia=4, normal=4)
    strict = tmp_path / "strict"
    shutil.copytree(model_dir, strict)
    metadata = json.loads((strict / "model.json").read_text())
    (strict / "model.json").write_text(json.dumps({**metadata, "threshold": 0.999999}))

    first = evaluate_folder(str(model_dir), folder)
    second = evaluate_folder(str(strict), folder)

    assert first["metrics"]["threshold"] == 0.5 and second["metrics"]["threshold"] == 0.999999
    assert first["report"] != second["report"] and first["predictions"] != second["predictions"]
    assert "threshold P(pneumonia) >= 0.5000" in Path(first["report"]).read_text()
    assert set(pd.read_csv(first["predictions"])["label"]) == {"pneumonia", "normal"}
