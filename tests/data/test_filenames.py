"""File names that are not UTF-8 (Latin-1 from old Windows shares): kept losslessly, shown escaped, never dropped."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.imaging import check_file, load_greyscale
from cxr.data.ingesting import ingest_folder
from cxr.data.scanning import path_text, real_path, scan_folder

LATIN1_NAME = b"M\xfcller-0001.jpeg"  # "Müller" in Latin-1: not valid UTF-8


def write_jpeg(path: Path | bytes, seed: int, size: int = 40) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    with open(path, "wb") as handle:
        Image.fromarray(pixels).save(handle, format="JPEG")


@pytest.mark.parametrize(
    "raw",
    [LATIN1_NAME, "Müller.jpeg".encode(), b"a\\b\\x41.png", b"x\xc3y\\xc3.png", b"plain.png"],
)
def test_path_text_is_utf8_and_gives_back_the_exact_name(raw):
    text = path_text(os.fsdecode(raw))
    text.encode("utf-8")  # storable in Parquet, CSV and JSON
    assert os.fsencode(real_path(text)) == raw


@pytest.fixture
def latin1_folder(tmp_path) -> Path:
    """Two images per class, a valid Latin-1-named NORMAL image and an empty Latin-1-named file."""
    root = tmp_path / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for index in range(2):
            write_jpeg(root / label / f"{label.lower()}-{index}.jpeg", seed=10 * len(label) + index)
    write_jpeg(os.fsencode(root / "NORMAL") + b"/" + LATIN1_NAME, seed=99)
    open(os.fsencode(root / "PNEUMONIA") + b"/\xe9mpty.jpeg", "wb").close()
    return root


def test_a_valid_image_with_a_latin1_name_is_ingested_and_named_losslessly(latin1_folder, tmp_path):
    """Checked: before, the image was quarantined as `bad_filename` and lost to training."""
    result = ingest_folder(latin1_folder, tmp_path / "out", min_side=32, workers=1)
    manifest = pd.read_parquet(result.manifest_path)
    quarantine = pd.read_csv(result.quarantine_path)

    assert result.files_found == 6 and result.accepted == 5
    assert result.quarantined_by_reason == {"empty_file": 1}
    [kept] = [path for path in manifest["path"] if "ller-0001" in path]
    assert kept.endswith("/NORMAL/M\\xfcller-0001.jpeg")  # shown escaped...
    assert os.fsencode(real_path(kept)).endswith(b"/" + LATIN1_NAME)  # ...and the exact name is kept
    assert manifest.set_index("path").loc[kept, "label"] == "normal"
    assert load_greyscale(Path(kept), 16).shape == (16, 16)  # batches decode it by its manifest path
    [empty] = quarantine["path"]
    assert empty.endswith("/PNEUMONIA/\\xe9mpty.jpeg") and os.path.exists(real_path(empty))


def test_predictions_keep_the_name(latin1_folder, tmp_path):
    from cxr.evaluation.predicting import score_files
    from cxr.model.loading import load_model_with_metadata
    from tests.helpers.toy_models import write_blob_model

    model, metadata = load_model_with_metadata(write_blob_model(tmp_path / "model"))
    frame = score_files(model, metadata, [latin1_folder / "NORMAL"])
    [row] = frame[frame["path"].str.contains("ller-0001")].to_dict("records")
    assert row["status"] == "ok" and row["path"].endswith("/M\\xfcller-0001.jpeg")
    assert os.fsencode(real_path(row["path"])).endswith(b"/" + LATIN1_NAME)


def test_bad_filename_only_for_a_name_the_file_system_refuses(tmp_path, monkeypatch):
    import builtins

    write_jpeg(tmp_path / "fine.jpeg", seed=1)
    [found] = scan_folder(tmp_path)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == found.path:
            raise OSError(errno.EILSEQ, "Invalid or incomplete multibyte or wide character")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    check = check_file(found.path)
    assert (check.reason, check.sha256) == ("bad_filename", None)
