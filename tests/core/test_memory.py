"""Peak resident memory of one stretch of work, and of the whole process across those measurements."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.memory import PeakMemory, peak_rss_mib

ALLOCATED_MIB = 200


def _touch(mib: int) -> float:
    """Allocate and write `mib` MiB (resident, not just reserved), then free it."""
    block = np.ones(mib * 2**20, dtype=np.uint8)
    return float(block[-1])


def test_a_block_reports_its_own_peak_and_the_process_keeps_the_highest():
    if peak_rss_mib() is None:
        pytest.skip("no /proc/self/status (not Linux)")
    with PeakMemory() as heavy:
        _touch(ALLOCATED_MIB)
    with PeakMemory() as light:
        pass
    if heavy.mib is None:
        pytest.skip("this kernel cannot reset the peak (/proc/self/clear_refs)")
    # The freed block is gone from the second block's peak, but not from the process's.
    assert heavy.mib - light.mib >= 0.8 * ALLOCATED_MIB
    assert peak_rss_mib() >= heavy.mib
