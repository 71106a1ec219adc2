"""Ingest as plan -> mapped chunk checks -> assemble: same manifest as `ingest_folder`, cached reruns,
and the same result on a Dask cluster."""

from __future__ import annotations

import random
import shutil
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import cxr.data.ingesting as ingest_module
from cxr.config.params import IngestParams
from cxr.core.errors import CxrError
from cxr.data import ingest_plans
from cxr.data.demo_data import write_demo_dataset
from cxr.data.ingesting import assemble_manifest, check_paths, ingest_folder, plan_folder
from tasks import ingest as ingest_stage

MIN_SIDE = 32
PLAN_STEPS = ["ingest-plan", "ingest-check", "ingest-assemble"]


@pytest.fixture
def folder(tmp_path) -> Path:
    """A small Kaggle-layout folder with a duplicate, a label conflict, a truncated and an unlabelled file."""
    root = tmp_path / "chest_xray"
    write_demo_dataset(root, n=24, size=40, seed=3)
    normal = sorted((root / "train" / "NORMAL").iterdir())
    pneumonia = sorted((root / "train" / "PNEUMONIA").iterdir())
    shutil.copy(normal[0], root / "test" / "NORMAL" / "zz-copy.jpeg")  # duplicate, same label
    shutil.copy(normal[1], root / "train" / "PNEUMONIA" / "zz-conflict.jpeg")  # same bytes, other label
    (root / "train" / "NORMAL" / "zz-truncated.jpeg").write_bytes(pneumonia[0].read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ingest_plans, "MAP_CHUNK_SIZE", 5)


def _frames(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(result.manifest_path), pd.read_csv(result.quarantine_path)


def test_chunked_checks_in_any_order_give_ingest_folders_result(folder, tmp_path, small_chunks):
    whole = ingest_folder(folder, tmp_path / "whole", min_side=MIN_SIDE, workers=1)

    plan = plan_folder(folder, tmp_path / "chunked", min_side=MIN_SIDE)
    chunks = plan.chunks()
    assert [len(chunk) for chunk in chunks] == [5] * 5 + [2]  # 27 labelled files, notes.txt is not
    random.Random(0).shuffle(chunks)
    checks = [check for chunk in chunks for check in check_paths([path for path, _, _ in chunk])]
    chunked = assemble_manifest(plan, checks)

    assert chunked.digest == whole.digest
    assert chunked.model_dump(exclude={"manifest_path", "quarantine_path", "elapsed_s"}) == whole.model_dump(
        exclude={"manifest_path", "quarantine_path", "elapsed_s"}
    )
    assert whole.quarantined_by_reason == {
        "duplicate": 1,
        "label_conflict": 2,
        "truncated": 1,
        "unknown_class": 1,
    }
    for mapped, single in zip(_frames(chunked), _frames(whole), strict=True):
        pd.testing.assert_frame_equal(mapped, single)


def test_assemble_refuses_a_plan_with_unchecked_files(folder, tmp_path):
    plan = plan_folder(folder, tmp_path / "out", min_side=MIN_SIDE)
    with pytest.raises(ValueError, match="27 planned files were not checked"):
        assemble_manifest(plan, [])


def _ingest_flow(task_runner=None, width: int | None = None):
    """A flow running only the retrain flow's ingest wiring; returns the result and the reused steps."""
    from prefect import flow

    from flows.retrain import ingest_stage
    from flows.stages import StageRunner

    @flow(name="ingest-only")
    def ingest_only(data_dir: str):
        run = StageRunner(width=width)
        return ingest_stage(run, data_dir, IngestParams(min_image_side=MIN_SIDE)), run.cached

    return ingest_only.with_options(task_runner=task_runner) if task_runner else ingest_only


def test_mapped_flow_matches_ingest_folder_caches_reruns_and_reuses_checks(
    prefect_harness, folder, tmp_path, small_chunks, monkeypatch
):
    reference = ingest_folder(folder, tmp_path / "reference", min_side=MIN_SIDE, workers=1)
    checked: list[str] = []
    real_check = ingest_module.check_file
    monkeypatch.setattr(ingest_module, "check_file", lambda path: checked.append(path) or real_check(path))
    ingest_only = _ingest_flow()

    first, cached = ingest_only(str(folder))
    assert cached == []
    assert (first.digest, first.accepted, first.quarantined) == (
        reference.digest,
        reference.accepted,
        reference.quarantined,
    )
    assert len(checked) == 27
    # The manifest's folder is named by the plan's cache key (listing, minimum side, code): one payload.
    inputs = {"data_dir": str(folder), "params": IngestParams(min_image_side=MIN_SIDE)}
    plan_key = ingest_stage.plan_ingest.cache_policy.key(ingest_stage.plan_ingest, inputs)
    assert Path(first.manifest_path).parent.name == plan_key[:16]

    checked.clear()
    second, cached = ingest_only(str(folder))
    assert cached == PLAN_STEPS
    assert second == first and checked == []

    new_file = folder / "train" / "NORMAL" / "zz-new.jpeg"
    write_demo_dataset(tmp_path / "extra", n=8, size=40, seed=99)
    shutil.copy(next((tmp_path / "extra" / "train" / "NORMAL").iterdir()), new_file)
    third, cached = ingest_only(str(folder))
    assert cached == []  # a new listing: new plan, one new chunk, new manifest
    assert checked == [str(new_file)]  # the previous manifest's checks are reused
    assert (third.accepted, third.reused) == (first.accepted + 1, 27)  # truncated: a content failure, reused
    assert third.digest != first.digest


def test_checks_in_groups_give_the_same_manifest_in_at_most_width_runs(
    prefect_harness, folder, tmp_path, small_chunks, monkeypatch
):
    """Six chunks on a width of 2 (the thread runner's `mapped_width`): two `ingest-check` runs, each checking
    its chunks one after another, the manifest of `ingest_folder`, and a cached rerun of two runs."""
    from cxr.core import faults

    reference = ingest_folder(folder, tmp_path / "reference", min_side=MIN_SIDE, workers=1)
    runs: list[str] = []
    monkeypatch.setattr(faults, "kill_once", lambda point, markers: runs.append(point))  # once per check run
    ingest_in_groups = _ingest_flow(width=2)

    grouped, cached = ingest_in_groups(str(folder))
    assert runs == ["ingest_check"] * 2 and cached == []
    assert (grouped.digest, grouped.accepted, grouped.quarantined) == (
        reference.digest,
        reference.accepted,
        reference.quarantined,
    )
    again, cached = ingest_in_groups(str(folder))
    assert again == grouped and cached == PLAN_STEPS


def test_task_runner_from_env(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.retrain import DASK_ADDRESS_ENV, task_runner_from_env

    monkeypatch.delenv(DASK_ADDRESS_ENV, raising=False)
    assert isinstance(task_runner_from_env(), ThreadPoolTaskRunner)

    monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://scheduler:8786")
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if not installed
    with pytest.raises(CxrError, match="needs prefect-dask"):
        task_runner_from_env()


def test_ingest_on_a_dask_cluster_gives_the_same_manifest(prefect_harness, folder, tmp_path, monkeypatch):
    pytest.importorskip("prefect_dask", reason="prefect-dask not installed (extra 'dask')")
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed")
    from prefect_dask import DaskTaskRunner

    from flows.retrain import DASK_ADDRESS_ENV, task_runner_from_env

    reference = ingest_folder(folder, tmp_path / "reference", min_side=MIN_SIDE, workers=1)
    threads: set[str] = set()
    real_check = ingest_module.check_file
    monkeypatch.setattr(
        ingest_module,
        "check_file",
        lambda path: threads.add(threading.current_thread().name) or real_check(path),
    )
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        monkeypatch.setenv(DASK_ADDRESS_ENV, cluster.scheduler_address)
        runner = task_runner_from_env()
        assert isinstance(runner, DaskTaskRunner)
        result, cached = _ingest_flow(runner)(str(folder))

    assert cached == []
    assert result.digest == reference.digest
    assert threads and all("Dask" in name for name in threads), threads
