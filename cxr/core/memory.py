"""Resident memory of this process (Linux `/proc`): its peak since it started, and the peak of one stretch of work.

The kernel keeps one peak per process (`VmHWM`); writing "5" to `/proc/self/clear_refs` sets it back to the
current resident size, so the peak of a stage is read exactly, short spikes included (sampling would miss
them). The peak before each reset is remembered, so `peak_rss_mib` still reports the whole process's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"
_lock = threading.Lock()
_peak_before_reset_kib = 0


def _status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS); None off Linux."""
    try:
        status = _STATUS.read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), None)


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started its program (None off Linux).

    `VmHWM` belongs to the memory of this program only; `ru_maxrss` would also count the parent
    that started it, which is what a benchmark running `cxr train` from a large process would see.
    """
    kib = _status_kib("VmHWM")
    return None if kib is None else _mib(max(kib, _peak_before_reset_kib))


class PeakMemory:
    """`with PeakMemory() as peak: ...`, then `peak.mib`: the process's peak resident memory (MiB) while the
    block ran; None where the peak cannot be reset. Blocks must not overlap (one peak per process)."""

    def __init__(self) -> None:
        self.mib: float | None = None
        self._reset = False

    def __enter__(self) -> PeakMemory:
        global _peak_before_reset_kib
        with _lock:
            _peak_before_reset_kib = max(_peak_before_reset_kib, _status_kib("VmHWM") or 0)
            try:
                _CLEAR_REFS.write_text(_RESET_PEAK)
                self._reset = True
            except OSError:  # not Linux, or a kernel without the peak reset (before 4.0)
                self._reset = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._reset:
            self.mib = _mib(_status_kib("VmHWM"))
