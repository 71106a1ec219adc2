"""Fault injection for the failure tests: `CXR_FAULTS="read_image:2,kill_after_epoch:1"`.

Production code calls these hooks at the few points where the outside world can fail (reading an
image, reaching the registry, being killed mid-training or mid-registration). Without `CXR_FAULTS`
each hook is a dictionary lookup that does nothing. The variable crosses process boundaries, so a
test can plan faults for a `cxr` subprocess or for ingest's worker processes. Counts are per process.

Points used by the code base:
- `read_image:N`      the first N image opens raise a transient OSError (EIO)
- `registry:N`        the first N registrations raise a transient OSError (registry unreachable)
- `kill_after_epoch:E` SIGKILL this process right after training epoch E is backed up
- `kill_once_ingest_check:1` SIGKILL the first process (of all, e.g. one Dask worker) that starts an
                      ingest check; a marker file in $CXR_HOME/faults/ keeps every later one alive
- `kill_before_version:1` SIGKILL after the model is logged to MLflow, before its version is created
- `registry_alias:N`  the first N moves of the `champion` alias raise a transient OSError (before the move)
- `registry_record_<tag>:N` the first N writes of a tag recording an alias move (`champion_history`,
                      `champion_change`, `promoted_at`, `promotion_decision`, ...) raise, after the alias moved
- `pause_in_gate:S`   sleep S seconds between reading the champion and moving the alias
- `pause_in_train:S`  sleep S seconds as training starts (widens the window two identical runs race in)
- `hang_<point>:S`    block S seconds where `hang(point)` is called (`hang_read_image:600`: a stalled
                      NFS read; `hang_registry:600`: a registry call that never returns)
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

ENV_VAR = "CXR_FAULTS"

# A planned hang sleeps in slices this long: Prefect's timeout can only interrupt a worker thread
# between Python calls, as it could a real stalled read that returns to Python now and then.
HANG_SLICE_S = 0.1

_hits: Counter[str] = Counter()
_hits_lock = threading.Lock()


def planned(point: str) -> float | None:
    """The number given for `point` in $CXR_FAULTS, or None when no fault is planned there."""
    spec = os.environ.get(ENV_VAR, "")
    if not spec:
        return None
    for entry in spec.split(","):
        name, _, value = entry.strip().partition(":")
        if name == point:
            return float(value or 1)
    return None


def hits(point: str) -> int:
    """How often `fail_first(point)` or a planned `pause(point)` was reached in this process since `reset()`."""
    return _hits[point]


def reset() -> None:
    """Forget the hit counts (each test plans its faults afresh)."""
    _hits.clear()


def fail_first(point: str) -> None:
    """Raise a transient OSError (EIO) on the first N calls for `point` in this process."""
    times = planned(point)
    if times is None:
        return
    with _hits_lock:
        _hits[point] += 1
        count = _hits[point]
    if count <= times:
        raise OSError(errno.EIO, f"injected fault at {point} ({count} of {times:g})")


def kill_at(point: str, step: int = 1) -> None:
    """SIGKILL this process (no cleanup, like the OOM killer or a power cut) when `point` is planned at `step`."""
    if planned(point) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_once(point: str, markers: Path) -> None:
    """SIGKILL this process if it is the first of all processes to reach `point` with `kill_once_<point>` planned.

    `markers` is a folder every process sees (the state folder's `faults/`): the marker file left there tells
    the others that the kill happened."""
    if planned(f"kill_once_{point}") is None:
        return
    markers.mkdir(parents=True, exist_ok=True)
    try:  # creating the marker is atomic: exactly one process wins
        (markers / f"kill_once_{point}").touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def pause(point: str) -> None:
    """Sleep the planned number of seconds at `point`, widening a race window for a test."""
    seconds = planned(point)
    if seconds:
        with _hits_lock:
            _hits[point] += 1
        time.sleep(seconds)


def hang(point: str) -> None:
    """Block for the seconds planned as `hang_<point>:S` (a call that does not return), else return at once."""
    seconds = planned(f"hang_{point}")
    if not seconds:
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(HANG_SLICE_S, left))
