"""Ingest: layouts, the bad-input corpus (every quarantine reason), incremental re-ingest, the task."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxr.data.ingesting as ingest_module
from cxr.core.errors import DataError
from cxr.data.ingesting import ingest_folder
from cxr.data.layouts import parse_patient_id
from cxr.data.manifests import MANIFEST_COLUMNS
from cxr.data.scanning import data_dir_fingerprint, scan_folder
from tasks.ingest import data_report_markdown
from tests.helpers.image_files import png_declaring


def write_image(path: Path, seed: int, size: int = 40, fmt: str = "JPEG") -> Path:
    """A distinct small noise image (distinct seed -> distinct content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def run_ingest(data_dir: Path, out_dir: Path, **kwargs):
    kwargs.setdefault("min_side", 32)
    result = ingest_folder(data_dir, out_dir, **kwargs)
    assert result.files_found == result.accepted + result.quarantined
    assert result.files_found == len(scan_folder(data_dir.resolve()))
    return result, pd.read_parquet(result.manifest_path), pd.read_csv(result.quarantine_path)


def reasons_by_name(quarantine: pd.DataFrame) -> dict[str, str]:
    return {
        Path(path).name: reason for path, reason in zip(quarantine["path"], quarantine["reason"], strict=True)
    }


@pytest.fixture
def bad_corpus(tmp_path, monkeypatch) -> Path:
    """A Kaggle-layout folder with good images and one file for every quarantine reason."""
    root = tmp_path / "corpus"
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    for index in range(3):
        write_image(normal / f"IM-00{index}1-0001.jpeg", seed=index)
        write_image(pneumonia / f"person{index}_bacteria_{index}.jpeg", seed=10 + index)
    write_image(root / "test" / "NORMAL" / "IM-0900-0001.jpeg", seed=20)
    # duplicate: same bytes, same label; the sorted-first copy is kept
    shutil.copy(normal / "IM-0001-0001.jpeg", normal / "copy.jpeg")
    # label conflict: same bytes under both classes
    write_image(normal / "conflict-a.jpeg", seed=30)
    shutil.copy(normal / "conflict-a.jpeg", pneumonia / "conflict-b.jpeg")
    (normal / "empty.jpeg").touch()
    (normal / "page.jpeg").write_text("<html>not found</html>")
    (normal / "README.txt").write_text("notes")
    data = write_image(tmp_path / "big.jpeg", seed=40, size=256).read_bytes()
    (pneumonia / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    write_image(pneumonia / "tiny.jpeg", seed=41, size=16)
    png_declaring(pneumonia / "bomb.png", 50_000, 50_000)
    (pneumonia / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(200))
    unreadable = write_image(pneumonia / "locked.jpeg", seed=42)
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root ignores file modes: simulate the denial
        real_open = builtins.open

        def denying_open(file, *args, **kwargs):
            if str(file) == str(unreadable.resolve()):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denying_open)
    os.symlink(tmp_path / "missing.jpeg", normal / "dangling.jpeg")
    os.symlink("self-loop.jpeg", normal / "self-loop.jpeg")
    os.symlink(root / "train", normal / "cycle")  # folder link back up the tree
    write_image(root / "train" / "COVID" / "x.jpeg", seed=50)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    # A valid image whose name is Latin-1, not UTF-8 (old Windows shares): kept, not quarantined.
    latin1_name = os.fsencode(normal) + b"/M\xfcller-0001.jpeg"
    with open(latin1_name, "wb") as handle:
        handle.write(write_image(tmp_path / "for-latin1-name.jpeg", seed=60).read_bytes())
    return root


def test_bad_corpus_every_reason_quarantined(bad_corpus, tmp_path):
    result, manifest, quarantine = run_ingest(bad_corpus, tmp_path / "out", workers=1)
    assert result.quarantined_by_reason == {
        "broken_symlink": 1,
        "corrupt_dicom": 1,
        "decompression_bomb": 1,
        "duplicate": 1,
        "empty_file": 1,
        "label_conflict": 2,
        "not_an_image": 2,  # page.jpeg and README.txt
        "symlink_loop": 2,  # self-referencing link and folder cycle
        "too_small": 1,
        "truncated": 1,
        "unknown_class": 2,  # train/COVID/x.jpeg and top-level .DS_Store
        "unreadable": 1,
    }
    assert result.accepted == 8 and result.files_found == 8 + 16
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert list(quarantine.columns[:3]) == ["path", "reason", "detail"]
    by_name = reasons_by_name(quarantine)
    assert by_name["copy.jpeg"] == "duplicate"
    assert by_name["self-loop.jpeg"] == "symlink_loop" and by_name["cycle"] == "symlink_loop"
    assert by_name["x.jpeg"] == "unknown_class" and by_name["dangling.jpeg"] == "broken_symlink"
    duplicate = quarantine[quarantine["reason"] == "duplicate"].iloc[0]
    assert duplicate["detail"].endswith("IM-0001-0001.jpeg") and duplicate["detail"] in set(
        "same content as " + manifest["path"]
    )
    assert not manifest["path"].str.contains("conflict").any()
    assert result.per_class == {"pneumonia": 3, "normal": 5}
    assert result.per_source_split == {"train": {"normal": 4, "pneumonia": 3}, "test": {"normal": 1}}
    assert result.duplicates == 1
    assert manifest["patient_id"].isna().sum() == 1  # M\xfcller-0001.jpeg names no patient
    assert set(manifest["patient_id"].dropna()) == {
        "IM-0001",
        "IM-0011",
        "IM-0021",
        "IM-0900",
        "person0",
        "person1",
        "person2",
    }


@pytest.mark.parametrize(
    ("layout", "files", "expected"),
    [
        (
            "kaggle",
            ["Train/Normal/a.jpeg", "train/PNEUMONIA/b.jpeg", "val/NORMAL/c.jpeg", "TEST/pneumonia/d.jpeg"],
            {
                "a": ("normal", "train"),
                "b": ("pneumonia", "train"),
                "c": ("normal", "val"),
                "d": ("pneumonia", "test"),
            },
        ),
        (
            "bare",
            ["NORMAL/a.jpeg", "pneumonia/b.png", "PNEUMONIA/sub/c.jpeg", "other/d.jpeg"],
            {"a": ("normal", None), "b": ("pneumonia", None), "c": ("pneumonia", None)},
        ),
        (
            "flat",
            [
                "normal_1.jpeg",
                "x-Pneumonia-2.png",
                "NORMAL3.jpg",
                "other.jpeg",
                "normal-pneumonia.jpeg",
                "chest_xray/train/NORMAL/NORMAL2-IM-0001-0001.jpeg",
            ],
            {"normal_1": ("normal", None), "x-Pneumonia-2": ("pneumonia", None), "NORMAL3": ("normal", None)},
        ),
    ],
)
def test_layouts(tmp_path, layout, files, expected):
    root = tmp_path / layout
    for seed, relative in enumerate(files):
        write_image(root / relative, seed=seed, fmt="PNG" if relative.endswith(".png") else "JPEG")
    result, manifest, quarantine = run_ingest(root, tmp_path / "out")
    labels = {
        Path(p).stem: (lab, split) for p, lab, split in manifest[["path", "label", "source_split"]].values
    }
    labels = {stem: (label, None if pd.isna(split) else split) for stem, (label, split) in labels.items()}
    assert labels == expected
    assert set(quarantine["reason"]) <= {"unknown_class"}
    assert len(quarantine) == len(files) - len(expected)
    assert result.accepted == len(expected)


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person12_bacteria_45.jpeg", "person12"),
        ("person1_virus_6.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan_0001.png", None),
    ],
)
def test_parse_patient_id(name, patient):
    assert parse_patient_id(name) == patient


def test_patient_pattern_is_configurable(tmp_path):
    write_image(tmp_path / "data" / "NORMAL" / "pt-007_scan2.jpeg", seed=1)
    assert parse_patient_id("pt-007_scan2.png", r"^(pt-\d+)_") == "pt-007"
    _, manifest, _ = run_ingest(tmp_path / "data", tmp_path / "out", patient_pattern=r"^(?P<patient>pt-\d+)_")
    assert manifest["patient_id"].tolist() == ["pt-007"]


def test_incremental_reingest_checks_only_new_and_changed_files(bad_corpus, tmp_path, monkeypatch):
    first, manifest, _ = run_ingest(bad_corpus, tmp_path / "one", workers=1)
    checked: list[str] = []
    real_check = ingest_module.check_file
    monkeypatch.setattr(
        ingest_module, "check_file", lambda path: checked.append(Path(path).name) or real_check(path)
    )
    write_image(bad_corpus / "train" / "NORMAL" / "IM-0500-0001.jpeg", seed=99, size=48)
    touched = bad_corpus / "train" / "PNEUMONIA" / "person0_bacteria_0.jpeg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    second, manifest2, quarantine2 = run_ingest(
        bad_corpus, tmp_path / "two", workers=1, previous_manifest=Path(first.manifest_path)
    )
    # the unreadable file is always re-checked: a permission fix must take effect
    assert sorted(checked) == ["IM-0500-0001.jpeg", "locked.jpeg", "person0_bacteria_0.jpeg"]
    assert second.accepted == first.accepted + 1
    assert second.reused == 20 - 3  # labelled files without a path problem, less the three checked
    assert reasons_by_name(quarantine2)["truncated.jpeg"] == "truncated"  # reused, not re-decoded
    assert second.quarantined_by_reason == first.quarantined_by_reason
    assert second.digest != first.digest

    # only an mtime change: re-checked but the digest (content + labels) does not move
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    checked.clear()
    third, _, _ = run_ingest(
        bad_corpus, tmp_path / "three", workers=1, previous_manifest=Path(second.manifest_path)
    )
    assert sorted(checked) == ["locked.jpeg", "person0_bacteria_0.jpeg"]
    assert third.digest == second.digest

    # a stricter minimum side applies to reused checks too, without decoding again
    checked.clear()
    fourth, _, _ = run_ingest(
        bad_corpus, tmp_path / "four", min_side=41, workers=1, previous_manifest=Path(third.manifest_path)
    )
    assert checked == ["locked.jpeg"]
    assert fourth.accepted == 1  # only the 48 px newcomer; the 40 px images, copies included, are too small
    assert fourth.quarantined_by_reason["too_small"] == 1 + 8 + 1 + 2


def test_process_pool_matches_in_process(tiny_kaggle, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "POOL_MIN_FILES", 1)
    pooled, manifest_pooled, _ = run_ingest(tiny_kaggle, tmp_path / "pool", workers=2)
    single, manifest_single, _ = run_ingest(tiny_kaggle, tmp_path / "single", workers=1)
    assert pooled.digest == single.digest
    pd.testing.assert_frame_equal(manifest_pooled, manifest_single)


def test_pool_failure_falls_back_to_in_process(tiny_kaggle, tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    class BrokenPool:
        def __init__(self, *args, **kwargs):
            raise BrokenProcessPool("no workers here")

    monkeypatch.setattr(ingest_module, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(ingest_module, "ProcessPoolExecutor", BrokenPool)
    result, _, _ = run_ingest(tiny_kaggle, tmp_path / "out", workers=2)
    assert result.accepted == 12


@pytest.fixture
def tiny_kaggle(tmp_path) -> Path:
    root = tmp_path / "tiny"
    for index in range(6):
        write_image(root / "train" / "NORMAL" / f"IM-{index:04d}-0001.jpeg", seed=index)
        write_image(root / "train" / "PNEUMONIA" / f"person{index}_virus_{index}.jpeg", seed=100 + index)
    return root


def test_missing_or_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ingest_folder(tmp_path / "nope", tmp_path / "out", min_side=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        ingest_folder(tmp_path / "empty", tmp_path / "out", min_side=8)
    (tmp_path / "junk" / "NORMAL").mkdir(parents=True)
    (tmp_path / "junk" / "NORMAL" / "a.jpeg").write_text("nope")
    with pytest.raises(DataError, match="no usable images.*not_an_image"):
        ingest_folder(tmp_path / "junk", tmp_path / "out", min_side=8)
    assert (tmp_path / "out" / "quarantine.csv").is_file()


def test_fingerprint_follows_listing_not_content_reads(tiny_kaggle):
    before = data_dir_fingerprint(tiny_kaggle)
    assert data_dir_fingerprint(tiny_kaggle) == before
    target = next((tiny_kaggle / "train" / "NORMAL").iterdir())
    os.utime(target, ns=(0, 123))
    assert data_dir_fingerprint(tiny_kaggle) != before


def test_data_report_markdown(tiny_kaggle, tmp_path):
    result, _, _ = run_ingest(tiny_kaggle, tmp_path / "out")
    report = data_report_markdown(result)
    assert "| train | 6 | 6 |" in report
    assert "| width | 40 | 40 | 40 |" in report
    assert "12 accepted" in report


@pytest.mark.real_data
def test_real_original_resolution(shared_data, tmp_path):
    folder = shared_data / "original_resolution"
    result, manifest, _ = run_ingest(folder, tmp_path / "out", min_side=64)
    assert (result.files_found, result.accepted) == (88, 88)
    virus = manifest[manifest["path"].str.contains("_virus_")]
    assert len(virus) > 0
    expected = virus["path"].map(lambda path: Path(path).name.split("_")[0])
    assert (virus["patient_id"] == expected).all()
    assert manifest["width"].max() > 1000
    from cxr.data.imaging import load_greyscale

    largest = manifest.loc[manifest["width"].idxmax(), "path"]
    assert load_greyscale(Path(largest), 224).shape == (224, 224)
    native = load_greyscale(Path(largest))
    row = manifest.loc[manifest["width"].idxmax()]
    assert native.shape == (row["height"], row["width"])


def test_incremental_reingest_sees_files_rewritten_in_place(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "NORMAL"
    for index in range(3):
        write_image(folder / f"IM-000{index}-0001.bmp", seed=index, fmt="BMP")
    first, manifest, _ = run_ingest(tmp_path / "data", tmp_path / "one", workers=1)
    checked: list[str] = []
    real_check = ingest_module.check_file
    monkeypatch.setattr(
        ingest_module, "check_file", lambda path: checked.append(Path(path).name) or real_check(path)
    )
    # same name, new content (a BMP of the same size keeps its byte count), and a later mtime
    edited = folder / "IM-0001-0001.bmp"
    before = edited.stat()
    write_image(edited, seed=50, fmt="BMP")
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 10**6))
    assert edited.stat().st_size == before.st_size
    # same name, new content of another size, mtime put back as it was
    resized = folder / "IM-0002-0001.bmp"
    stamp = resized.stat()
    write_image(resized, seed=51, size=48, fmt="BMP")
    os.utime(resized, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    second, manifest2, _ = run_ingest(
        tmp_path / "data", tmp_path / "two", workers=1, previous_manifest=Path(first.manifest_path)
    )
    assert sorted(checked) == ["IM-0001-0001.bmp", "IM-0002-0001.bmp"]
    assert second.reused == 1
    digests = dict(zip(manifest2["path"].map(lambda path: Path(path).name), manifest2["sha256"], strict=True))
    for path in (edited, resized):
        assert digests[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest2.loc[manifest2["path"].str.endswith("0002-0001.bmp"), "width"].item() == 48
    assert digests["IM-0000-0001.bmp"] == manifest["sha256"].iloc[0]  # unchanged: reused as it was


def test_patient_ids_are_parsed_again_when_the_pattern_changes(tmp_path):
    write_image(tmp_path / "data" / "NORMAL" / "pt-007_scan2.jpeg", seed=1)
    first, manifest, _ = run_ingest(tmp_path / "data", tmp_path / "one")
    second, manifest2, _ = run_ingest(
        tmp_path / "data",
        tmp_path / "two",
        patient_pattern=r"^(?P<patient>pt-\d+)_",
        previous_manifest=Path(first.manifest_path),
    )
    assert second.reused == 1  # the check is reused; the id follows the new pattern
    assert manifest["patient_id"].tolist() != ["pt-007"] and manifest2["patient_id"].tolist() == ["pt-007"]
    third, manifest3, _ = run_ingest(
        tmp_path / "data",
        tmp_path / "three",
        patient_pattern=r"^(?P<patient>pt-\d+)_",
        previous_manifest=Path(second.manifest_path),
    )
    assert manifest3["patient_id"].tolist() == ["pt-007"] and third.digest == second.digest


def test_incremental_ingest_writes_what_a_full_ingest_of_the_same_folder_writes(bad_corpus, tmp_path):
    import pyarrow.parquet as pq

    first, _, _ = run_ingest(bad_corpus, tmp_path / "one", workers=1)
    write_image(bad_corpus / "train" / "PNEUMONIA" / "person7_virus_9.jpeg", seed=98)
    shutil.copy(
        bad_corpus / "train" / "NORMAL" / "IM-0011-0001.jpeg", bad_corpus / "train" / "NORMAL" / "b.jpeg"
    )
    write_image(bad_corpus / "train" / "NORMAL" / "IM-0011-0001.jpeg", seed=97)  # rewritten in place
    (bad_corpus / "train" / "NORMAL" / "IM-0021-0001.jpeg").unlink()
    incremental, manifest, quarantine = run_ingest(
        bad_corpus, tmp_path / "two", workers=1, previous_manifest=Path(first.manifest_path)
    )
    full, full_manifest, full_quarantine = run_ingest(bad_corpus, tmp_path / "three", workers=1)

    assert incremental.reused > 0 and full.reused == 0
    pd.testing.assert_frame_equal(manifest, full_manifest)
    pd.testing.assert_frame_equal(quarantine, full_quarantine)
    assert pq.read_schema(incremental.manifest_path).equals(
        pq.read_schema(full.manifest_path), check_metadata=True
    )
    assert incremental.model_dump(exclude={"manifest_path", "quarantine_path", "elapsed_s", "reused"}) == (
        full.model_dump(exclude={"manifest_path", "quarantine_path", "elapsed_s", "reused"})
    )
