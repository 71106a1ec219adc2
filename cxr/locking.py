"""Inter-process locks on files, so concurrent runs take turns at shared state (the model registry).

`fcntl.flock` locks belong to an open file: the kernel releases them when the holder exits, even
on SIGKILL, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cxr.state import state_dir

DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.2


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller was willing to wait."""


@contextmanager
def file_lock(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Path]:
    """Hold an exclusive lock on `path` (created if needed) for the body of the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise LockTimeout(
                        f"{path} is still locked after {timeout_s:.0f} s (holder: {holder})"
                    ) from None
                time.sleep(_POLL_S)
        try:
            # Who holds it, for the timeout message of whoever waits.
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def registry_lock_path(tracking_uri: str, model_name: str) -> Path:
    """One lock per (store, registered model): a sqlite store's lock sits beside its database file, so
    runs with different state folders but the same store still take turns; other stores lock in the state folder."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return database.with_name(f"{database.name}.{model_name}.lock")
    key = hashlib.sha256(f"{tracking_uri}|{model_name}".encode()).hexdigest()[:16]
    return state_dir("locks") / f"registry-{key}.lock"


def registry_lock(
    tracking_uri: str, model_name: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> AbstractContextManager[Path]:
    """Serialise "find or create version, gate, move alias" for one registered model across processes."""
    return file_lock(registry_lock_path(tracking_uri, model_name), timeout_s)
