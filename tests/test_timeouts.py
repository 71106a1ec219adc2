"""Hung calls end in a clear timeout and the work moves on (hangs planned with $CXR_FAULTS)."""

from __future__ import annotations

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
