"""Hung calls end in a clear timeout and the work moves on (hangs planned with $CXR_FAULTS)."""

from __future__ import annotations

import shutil
import time

import pytest

from cxr import faults


@pytest.fixture
def no_faults(monkeypatch):
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    faults.reset()


def test_a_planned_hang_blocks_for_its_seconds_and_only_there(no_faults, monkeypatch):
    monkeypatch.setenv(faults.ENV_VAR, "hang_registry:0.6")
    started = time.monotonic()
    faults.hang("read_image")  # not planned: returns at once
    assert time.monotonic() - started < 0.1
    faults.hang("registry")
    assert 0.6 <= time.monotonic() - started < 2.0


TINY_TRAIN = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}


@pytest.fixture
def isolated(tmp_path, monkeypatch, no_faults):
    """This test's own state folder and registry: no cached result of another test answers for it."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_hung_registry_call_times_out_clearly_and_the_next_run_goes_on(
    prefect_harness, tiny_dataset, isolated, monkeypatch
):
    """`hang_registry` blocks registration for 300 s; the 5 s stage limit ends the run in seconds with a
    message naming the stage and its setting. Checked: without the timeouts the run waits out the hang."""
    from cxr.config import RetrainConfig
    from cxr.task_policy import StageTimeout
    from flows.retrain import retrain

    config = RetrainConfig(data_dir=str(tiny_dataset), train=TINY_TRAIN, timeouts={"register_s": 5})
    monkeypatch.setenv(faults.ENV_VAR, "hang_registry:300")
    started = time.monotonic()
    with pytest.raises(StageTimeout, match=r"register did not finish within 5 s \(timeouts\.register_s\)"):
        retrain(config)
    assert time.monotonic() - started < 120

    monkeypatch.delenv(faults.ENV_VAR)
    # The next run (default limits: a real registration takes longer than 5 s here) is not held up,
    # and reuses the trained model: limits decide no result.
    result = retrain(RetrainConfig(data_dir=str(tiny_dataset), train=TINY_TRAIN))
    assert result["model_version"] and "train" in result["cached_tasks"]


def test_the_run_limit_bounds_every_stage(prefect_harness, tiny_dataset, isolated, monkeypatch, tmp_path):
    """A hung image read in ingest's mapped checks (worker threads) ends at the run's 8 s limit."""
    from cxr.config import RetrainConfig
    from cxr.task_policy import StageTimeout
    from flows.retrain import retrain

    data = tmp_path / "data"  # a folder of its own: no cached check of another test skips the reads
    shutil.copytree(tiny_dataset, data)
    config = RetrainConfig(data_dir=str(data), train=TINY_TRAIN, timeouts={"flow_s": 8})
    monkeypatch.setenv(faults.ENV_VAR, "hang_read_image:300")
    started = time.monotonic()
    with pytest.raises(StageTimeout, match=r"timeouts\.flow_s"):
        retrain(config)
    assert time.monotonic() - started < 90
