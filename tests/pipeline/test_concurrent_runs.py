"""Identical runs started together compute each cached result once: the second waits and reuses it."""

from __future__ import annotations

import threading

from cxr.config.params import RetrainConfig
from tests.helpers.holders import holding


def test_two_identical_runs_started_together_train_once(
    prefect_harness, tiny_dataset, isolated_registry, monkeypatch
):
    """Training pauses 4 s as it starts, so both runs reach it while the first is still training.
    Checked: with ContentKey's isolation level left at Prefect's default (READ_COMMITTED) both runs start
    training (the second then fails on the checkpoint file the first holds open, and its retry finds the
    first one's result)."""
    from cxr.core import faults
    from cxr.registry.versions import list_versions
    from flows.retrain import retrain

    monkeypatch.setenv(faults.ENV_VAR, "pause_in_train:4")
    faults.reset()

    # A seed of its own, so no earlier test's cached training can answer for both runs.
    train = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16, "seed": 23}
    config = RetrainConfig(data_dir=str(tiny_dataset), split={"seed": 23}, train=train)
    start = threading.Barrier(2)
    results: list[dict] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(retrain(config))
        except BaseException as error:  # reported below with the other run's result
            errors.append(error)

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=600)

    assert not errors, errors
    assert faults.hits("pause_in_train") == 1  # the training code ran once, in one run
    trained = [result for result in results if "train" not in result["cached_tasks"]]
    assert len(trained) == 1, [result["cached_tasks"] for result in results]
    assert results[0]["model_version"] == results[1]["model_version"]
    assert results[0]["metrics"] == results[1]["metrics"]
    assert len(list_versions("cxr-pneumonia", isolated_registry)) == 1


def test_a_cache_lock_dies_with_its_holder(tmp_path, monkeypatch):
    """A run killed while it computes leaves no stale lock (Prefect's FileSystemLockManager would)."""
    from cxr.core.locking import cache_lock_manager

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    locks = cache_lock_manager()
    script = (
        "import sys; from cxr.core.locking import cache_lock_manager\n"
        "cache_lock_manager().acquire_lock('k1', 'other')\n"
        "print('held', flush=True); sys.stdin.read()\n"
    )
    with holding(script):
        assert locks.is_locked("k1")
        assert locks.acquire_lock("k1", "me", acquire_timeout=0.3) is False
    assert locks.wait_for_lock("k1", timeout=5)
    assert locks.acquire_lock("k1", "me", acquire_timeout=0)
    assert locks.is_lock_holder("k1", "me") and not locks.is_lock_holder("k1", "other")
    locks.release_lock("k1", "me")
    assert not locks.is_locked("k1")
