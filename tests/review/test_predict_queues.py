"""The `predict` flow queues what it refers or finds out of domain, and its summary counts the new items."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr.review import queue
from tests.helpers.domain_cases import add_domain_score, blob_scenes
from tests.helpers.toy_models import SIZE, write_blob_model, write_png


@pytest.fixture(scope="module")
def referring_model(tmp_path_factory) -> Path:
    """The blob model with a domain score and a referral band that refers every in-domain image."""
    folder = write_blob_model(tmp_path_factory.mktemp("referring"))
    add_domain_score(folder, blob_scenes(120, SIZE, seed=0), blob_scenes(60, SIZE, seed=1))
    metadata = json.loads((folder / "model.json").read_text())
    band = {"low": 0.0, "high": 1.0, "fitted_on": "test"}
    (folder / "model.json").write_text(json.dumps({**metadata, "referral": band}))
    return folder


def test_the_predict_flow_queues_referred_and_out_of_domain_images_once(
    prefect_harness, referring_model, tmp_path, monkeypatch
):
    from flows.predict import predict

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    folder = tmp_path / "incoming"
    usual = write_png(folder / "usual.png", blob_scenes(2, SIZE, seed=5)[1])
    (folder / "again").mkdir()
    shutil.copyfile(usual, folder / "again" / "usual-copy.png")  # the same image twice: one item
    write_png(folder / "blank.png", np.full((SIZE, SIZE), 200, np.uint8))
    write_png(folder / "noise.png", np.random.default_rng(3).integers(0, 256, (SIZE, SIZE), dtype=np.uint8))

    def run() -> dict:
        return predict(
            paths=[str(folder)],
            model_uri=str(referring_model),
            out_csv=str(tmp_path / "predictions.csv"),
            heatmaps_dir=str(tmp_path / "heatmaps"),
        )

    first = run()
    assert first["by_decision"] == {"pneumonia": 0, "normal": 0, "refer": 2, "out_of_domain": 2}
    assert first["queued_for_review"] == 3
    items = queue.items()
    # One item per content: the copy in again/ is the same image as usual.png (whichever came first).
    assert sorted(Path(item.source).name for item in items) in (
        ["blank.png", "noise.png", "usual.png"],
        ["blank.png", "noise.png", "usual-copy.png"],
    )
    assert sorted(item.decision for item in items) == ["out_of_domain", "out_of_domain", "refer"]
    assert all(item.heatmap and Path(item.heatmap).is_file() for item in items)
    assert {item.model_version for item in items} == {str(referring_model)}

    second = run()  # the same images again: scored and referred again, but nothing new in the queue
    assert second["by_decision"] == first["by_decision"] and second["queued_for_review"] == 0
    assert queue.counts()["queued"] == 3
