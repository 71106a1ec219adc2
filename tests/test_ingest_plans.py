"""Ingest plans on disk: what ingest's tasks pass is paths and digests; the lists come back unchanged."""

from __future__ import annotations

import pytest

from cxr import ingesting
from cxr.demo_data import write_demo_dataset
from cxr.errors import DataError
from cxr.imaging import FileCheck, ImageInfo
from cxr.ingest_plans import read_checks, store_plan, write_checks
from cxr.ingesting import check_paths, plan_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "chest_xray"
    write_demo_dataset(root, n=16, size=40, seed=5)
    (root / "notes.txt").write_text("not an image")  # refused without opening: in the plan's quarantine
    return root


def test_stored_plan_loads_back_the_same_plan(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ingesting, "MAP_CHUNK_SIZE", 5)
    plan = plan_folder(folder, tmp_path / "out", min_side=32)
    stored = store_plan(plan, tmp_path / "plan")
    assert stored.load() == plan
    assert [chunk.rows for chunk in stored.chunks()] == [5, 5, 5, 1] and stored.todo == 16
    assert [tuple(row) for chunk in stored.chunks() for row in chunk.read().itertuples(index=False)] == [
        stamp for chunk in plan.chunks() for stamp in chunk
    ]
    assert stored.is_intact()


def test_stored_plan_stays_the_same_size_whatever_the_number_of_files(tmp_path):
    sizes = []
    for count in (16, 160):
        root = tmp_path / f"folder-{count}"
        write_demo_dataset(root, n=count, size=16, seed=1)
        plan = plan_folder(root, tmp_path / f"out-{count}", min_side=8)
        sizes.append(len(store_plan(plan, tmp_path / f"plan-{count}").model_dump_json()))
    assert abs(sizes[1] - sizes[0]) <= 10  # counts gain a digit; no list travels inline


def test_checks_round_trip_and_a_changed_list_is_refused(folder, tmp_path):
    plan = plan_folder(folder, tmp_path / "out", min_side=32)
    checks = check_paths([item.path for item in plan.todo][:3], workers=1)
    checks += [FileCheck("/data/broken.png", reason="truncated", detail="image file is truncated")]
    checks += [FileCheck("/data/ok.png", "ab" * 32, ImageInfo(64, 48, "L", "PNG"))]
    listed = write_checks(checks, tmp_path / "checks.parquet")
    assert read_checks(listed) == checks

    write_checks(checks[:2], tmp_path / "checks.parquet")
    with pytest.raises(DataError, match="changed"):
        read_checks(listed)
