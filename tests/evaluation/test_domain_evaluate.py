"""`cxr evaluate` reports the share of a labelled folder its model flags out of domain, and the metrics on the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.helpers.domain_cases import add_domain_score, blob_scenes
from tests.helpers.toy_models import SIZE, write_blob_model, write_png

SIDE = 64  # ingest quarantines images below 64 px; the model works at 32


def write_scenes(folder: Path, scenes: np.ndarray, start: int = 0) -> list[Path]:
    """Blob scenes in the bare NORMAL/PNEUMONIA layout (the ones with a blob are pneumonia)."""
    paths = []
    for index, scene in enumerate(scenes, start=start):
        name = (
            f"PNEUMONIA/person{index}_bacteria_{index}.png"
            if index % 2
            else f"NORMAL/IM-{index:04d}-0001.png"
        )
        paths.append(write_png(folder / name, scene))
    return paths


@pytest.fixture(scope="module")
def guarded_model(tmp_path_factory) -> Path:
    """The blob model with a domain score fitted on scenes decoded from files as the pipeline decodes them."""
    from cxr.data.batches import decode_paths

    work = tmp_path_factory.mktemp("guarded")
    paths = write_scenes(work / "fit", blob_scenes(90, SIDE, seed=0))
    decoded = decode_paths([str(path) for path in paths], SIZE)
    model = write_blob_model(work / "model")
    add_domain_score(model, decoded[:60], decoded[60:], quantile=0.95)
    return model


def test_evaluate_reports_the_flagged_share_and_in_domain_metrics(guarded_model, tmp_path, capsys):
    folder = tmp_path / "data"
    scenes = blob_scenes(10, SIDE, seed=7)
    write_scenes(folder, scenes)
    write_scenes(folder, 255 - scenes[:4], start=100)  # inverted: never seen in training

    assert main(["evaluate", "--model", str(guarded_model), "--data", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 14 and result["out_of_domain"] >= 4
    assert result["out_of_domain_share"] == pytest.approx(result["out_of_domain"] / 14)
    assert result["n_in_domain"] == 14 - result["out_of_domain"]
    # The in-domain metrics count only the images that were not flagged, beside those on all images.
    assert result["metrics_in_domain"]["n"] == result["n_in_domain"] and result["metrics"]["n"] == 14
    # Answered alone: in domain and outside the referral band (this model has none); the evaluation's coverage
    # is the same share, as the images' decisions say.
    alone = result["answered_alone"]
    assert alone["answered_n"] == result["n_in_domain"] and alone["referred"] == 0.0
    assert alone["coverage"]["value"] == pytest.approx(result["n_in_domain"] / 14, abs=1e-6)
    assert result["metrics"]["coverage"] == alone["coverage"]["value"] and result["ci"]["coverage"]
    assert result["decisions"]["out_of_domain"] == result["out_of_domain"]


def test_evaluate_with_a_model_saved_before_the_domain_score(tmp_path, capsys):
    folder = tmp_path / "data"
    write_scenes(folder, blob_scenes(6, SIDE, seed=3))
    model = write_blob_model(tmp_path / "model")

    assert main(["evaluate", "--model", str(model), "--data", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out_of_domain"] is None and result["out_of_domain_share"] is None
    assert "without a domain score" in result["domain_note"]
