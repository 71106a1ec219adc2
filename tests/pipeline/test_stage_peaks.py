"""The flow's stage runner keeps each task's peak resident memory (`cxr train --json`: peak_rss_mib_by_task)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.memory import PeakMemory

ALLOCATED_MIB = 200


def test_each_task_gets_the_peak_of_its_own_run(prefect_harness):
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.stages import StageRunner

    with PeakMemory() as probe:
        pass
    if probe.mib is None:
        pytest.skip("this system cannot reset the peak resident memory")

    @task(name="heavy", cache_policy=NO_CACHE)
    def heavy(mib: int) -> float:
        return float(np.ones(mib * 2**20, dtype=np.uint8)[-1])  # written, so resident; freed on return

    @task(name="light", cache_policy=NO_CACHE)
    def light(item: int) -> int:
        return item

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def stages() -> dict[str, float | None]:
        run = StageRunner()
        run(heavy, ALLOCATED_MIB)
        run.map(light, [1, 2, 3])
        run(heavy, 1)  # a second call keeps the higher peak
        return run.peak_rss_mib

    peaks = stages()
    assert list(peaks) == ["heavy", "light"]
    assert peaks["heavy"] - peaks["light"] >= 0.8 * ALLOCATED_MIB
