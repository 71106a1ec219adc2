"""The review queue: referred and out-of-domain predictions enter it once per image content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli.main import main
from cxr.data.provenance import (
    ReviewRecord,
    read_records,
    reviewed_image_path,
    reviewed_summary,
    write_record,
)
from cxr.data.scanning import scan_folder
from cxr.review import queue
from cxr.review.referred import queue_referred


@pytest.fixture(autouse=True)
def own_state_folder(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CXR_HOME", str(home))
    return home


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _prediction_frame(folder: Path) -> pd.DataFrame:
    """Rows as `cxr predict` writes them, one per decision, plus a copy of a referred image elsewhere."""
    paths = [_image(folder / f"{name}.png", seed) for seed, name in enumerate(["a", "b", "c", "d"])]
    copy = folder / "elsewhere" / "b-again.png"
    copy.parent.mkdir()
    shutil.copyfile(paths[1], copy)
    overlay = _image(folder / "overlays" / "b.png", 9)
    return pd.DataFrame(
        {
            "path": [str(path) for path in [*paths, copy]],
            "probability": [0.9, 0.48, 0.3, np.nan, 0.48],
            "label": ["pneumonia", "normal", "normal", None, "normal"],
            "status": ["ok", "ok", "ok", "too_small", "ok"],
            "heatmap": [None, str(overlay), None, None, None],
            "in_domain": [True, True, False, None, True],
            "domain_score": [1.0, 0.5, -7.0, np.nan, 0.5],
            "decision": ["pneumonia", "refer", "out_of_domain", "too_small", "refer"],
        }
    )


def test_referred_and_out_of_domain_rows_are_queued_once_by_content(tmp_path):
    frame = _prediction_frame(tmp_path / "in")
    assert queue_referred(frame, "/models/v7") == 2
    assert queue_referred(frame, "/models/v7") == 0  # the same images again: nothing new
    items = {Path(item.source).name: item for item in queue.items()}
    assert sorted(items) == ["b.png", "c.png"]
    referred, outside = items["b.png"], items["c.png"]
    assert (referred.decision, referred.probability, referred.model_label) == ("refer", 0.48, "normal")
    assert (outside.decision, outside.domain_score) == ("out_of_domain", -7.0)
    assert referred.model_version == "/models/v7" and referred.origin == "predict"
    # The queue keeps its own copies: the source may move before anyone reviews it.
    os.remove(tmp_path / "in" / "b.png")
    assert Path(referred.image).read_bytes() == (tmp_path / "in" / "elsewhere" / "b-again.png").read_bytes()
    assert referred.heatmap and Path(referred.heatmap).is_file() and outside.heatmap is None
    assert queue.counts() == {"queued": 2, "sent": 0, "returned": 0, "added": 0, "recorded": 0}


def test_a_frame_without_decisions_queues_nothing(tmp_path):
    frame = _prediction_frame(tmp_path / "in").drop(columns="decision")
    assert queue_referred(frame, "models:/nowhere@champion") == 0
    assert queue.items() == []


def test_review_add_and_status_from_the_command_line(tmp_path, capsys):
    folder = tmp_path / "served"
    for seed in range(3):
        _image(folder / f"x{seed}.png", seed)
    shutil.copyfile(folder / "x0.png", folder / "x0-copy.png")
    assert main(["review", "add", str(folder), "--answer", "normal", "--probability", "0.51", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"queued": 3, "already_queued": 1}
    assert main(["review", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert status["url"] is None and status["labelled"] is None  # no Label Studio running
    assert (status["queued"], status["sent"], status["returned"]) == (3, 0, 0)
    assert main(["review", "add", str(tmp_path / "missing.png")]) == 2


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (["train/NORMAL/x.png", "test/NORMAL/y.png"], "train/PNEUMONIA/reviewed-{sha}.png"),
        (["NORMAL/x.png", "PNEUMONIA/y.png"], "PNEUMONIA/reviewed-{sha}.png"),
        ([], "PNEUMONIA/reviewed-{sha}.png"),
        (["normal-1.png", "pneumonia-2.png"], "reviewed-pneumonia-{sha}.png"),
    ],
)
def test_reviewed_images_go_where_ingest_reads_their_label(tmp_path, layout, expected):
    data = tmp_path / "data"
    data.mkdir()
    for seed, name in enumerate(layout):
        _image(data / name, seed)
    sha = "ab" * 32
    assert reviewed_image_path(data, "pneumonia", sha, ".PNG") == data / expected.format(sha=sha[:16])


def test_provenance_records_are_written_once_and_counted_by_split(tmp_path):
    record = ReviewRecord(
        sha256="1" * 64,
        label="normal",
        file="NORMAL/reviewed-1.png",
        reviewer="reader@site",
        reviewed_at="2026-12-07T18:00:00Z",
        task_id=4,
        model_version="models:/cxr-pneumonia/3",
        model_answer="pneumonia",
        decision="refer",
    )
    assert write_record(tmp_path, record) is True
    assert write_record(tmp_path, record.model_copy(update={"reviewer": "someone else"})) is False
    other = record.model_copy(update={"sha256": "2" * 64, "model_answer": "normal"})
    write_record(tmp_path, other)
    records = read_records(tmp_path)
    assert records[record.sha256].reviewer == "reader@site"
    assert scan_folder(tmp_path) == []  # records are no images: ingest and predict never see them
    split = pd.DataFrame({"sha256": ["1" * 64, "2" * 64, "3" * 64], "split": ["train", "valid", "test"]})
    assert reviewed_summary(split, records) == {
        "images": 2,
        "in_train": 1,
        "in_valid": 1,
        "in_test": 0,
        "answered_differently": 1,
    }
