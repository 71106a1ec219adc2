"""Ingest plans on disk: what ingest's tasks pass is paths and digests; the lists come back unchanged."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cxr.core.errors import DataError
from cxr.data import ingest_plans, ingesting
from cxr.data.demo_data import write_demo_dataset
from cxr.data.imaging import FileCheck, ImageInfo
from cxr.data.ingest_plans import PLAN_SCALARS, read_checks, store_plan, write_checks
from cxr.data.ingesting import check_paths, plan_folder
from cxr.data.manifests import checks_frame


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "chest_xray"
    write_demo_dataset(root, n=16, size=40, seed=5)
    (root / "notes.txt").write_text("not an image")  # refused without opening: in the plan's quarantine
    return root


def test_stored_plan_loads_back_the_same_plan(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_plans, "MAP_CHUNK_SIZE", 5)
    plan = plan_folder(folder, tmp_path / "out", min_side=32)
    stored = store_plan(plan, tmp_path / "plan")
    loaded = stored.load()
    for name in ("quarantine", "candidates", "reused"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(plan, name))
    assert [getattr(loaded, name) for name in PLAN_SCALARS] == [getattr(plan, name) for name in PLAN_SCALARS]
    assert len(plan.quarantine) == 1 and len(plan.candidates) == 16
    assert [chunk.rows for chunk in stored.chunks()] == [5, 5, 5, 1] and stored.todo == 16
    assert [tuple(row) for chunk in stored.chunks() for row in chunk.read().itertuples(index=False)] == [
        stamp for chunk in plan.chunks() for stamp in chunk
    ]
    assert stored.is_intact()


def test_a_big_folder_maps_a_bounded_number_of_chunks_covering_every_file(tmp_path):
    count = ingest_plans.MAP_CHUNK_SIZE * ingest_plans.MAX_MAP_CHUNKS + 1000
    candidates = pd.DataFrame(
        {"path": [f"/data/{n}.png" for n in range(count)], "size_bytes": 1, "mtime_ns": 2}
    )
    plan = ingest_plans.IngestPlan(
        data_dir="/data",
        out_dir=str(tmp_path),
        min_side=8,
        patient_pattern=ingesting.DEFAULT_PATIENT_PATTERN,
        files_found=count,
        quarantine=pd.DataFrame(),
        candidates=candidates,
        reused=pd.DataFrame({"path": pd.Series([], dtype=object)}),
        scan_s=0.0,
    )
    chunks = plan.chunks()
    assert len(chunks) == ingest_plans.MAX_MAP_CHUNKS
    assert [path for chunk in chunks for path, _, _ in chunk] == candidates["path"].tolist()
    assert len(plan.chunks(100)) == math.ceil(count / 100)  # an explicit size still wins


def test_stored_plan_stays_the_same_size_whatever_the_number_of_files(tmp_path):
    sizes = []
    for count in (16, 160):
        root = tmp_path / f"folder-{count}"
        write_demo_dataset(root, n=count, size=16, seed=1)
        plan = plan_folder(root, tmp_path / f"out-{count}", min_side=8)
        sizes.append(len(store_plan(plan, tmp_path / f"plan-{count}").model_dump_json()))
    assert abs(sizes[1] - sizes[0]) <= 24  # counts and file sizes gain a digit; no list travels inline


def test_checks_round_trip_and_a_changed_list_is_refused(folder, tmp_path):
    plan = plan_folder(folder, tmp_path / "out", min_side=32)
    checks = check_paths(plan.todo["path"].tolist()[:3], workers=1)
    checks += [FileCheck("/data/broken.png", reason="truncated", detail="image file is truncated")]
    checks += [FileCheck("/data/ok.png", "ab" * 32, ImageInfo(64, 48, "L", "PNG"))]
    listed = write_checks(checks, tmp_path / "checks.parquet")
    read = read_checks([listed])
    pd.testing.assert_frame_equal(read, checks_frame(checks))
    assert read["reason"].isna().tolist() == [True] * 3 + [False, True]
    assert read["width"].tolist()[-1] == 64 and pd.isna(read["width"].iloc[3])

    write_checks(checks[:2], tmp_path / "checks.parquet")
    with pytest.raises(DataError, match="changed"):
        read_checks([listed])
