"""Inter-process locks on files, so concurrent runs take turns at shared state (the model registry,
cached task results).

`fcntl.flock` locks belong to an open file: the kernel releases them when the holder exits, even
on SIGKILL, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from cxr.core.state_folder import state_dir

DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.2


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller was willing to wait."""


# The lock files each thread holds: taking one again inside its own `with` block (the gate promotes under the
# registry lock, and `promote` takes it for `cxr promote`) goes on instead of waiting for itself.
_held_by_thread = threading.local()


@contextmanager
def file_lock(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Path]:
    """Hold an exclusive lock on `path` (created if needed) for the body of the `with` block; re-entrant
    within a thread, exclusive between threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    held: set[Path] = _held_by_thread.__dict__.setdefault("paths", set())
    key = path.resolve()
    if key in held:
        yield path
        return
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
            held.add(key)
            yield path
        finally:
            held.discard(key)
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


class CacheLockManager:
    """Prefect lock manager (`prefect.locking.protocol.LockManager`) on flock'd files in the state folder.

    With `isolation_level=SERIALIZABLE` a task locks its cache key before it looks for a cached result,
    so a second identical run waits for the first and then reuses its result instead of computing it
    again. flock ties each lock to an open file of the holding process, so a run killed mid-task never
    leaves a stale lock (hold timeouts are therefore not needed and ignored). One instance per process.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, IO[str]]] = {}
        self._guard = threading.Lock()

    def __reduce__(self) -> tuple:  # a task sent to a Dask worker uses the worker's own instance
        return (cache_lock_manager, ())

    def __deepcopy__(self, memo: dict) -> CacheLockManager:
        return self

    @staticmethod
    def _path(key: str) -> Path:
        return state_dir("locks", "cache") / f"{key}.lock"

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        handle = open(self._path(key), "a+")  # noqa: SIM115 - kept open while the lock is held
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(_POLL_S)
        with self._guard:
            self._held[key] = (holder, handle)
        return True

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            if not self.is_lock_holder(key, holder):
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            _, handle = self._held.pop(key)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        path = self._path(key)
        if not path.exists():
            return False
        with open(path, "a+") as probe:  # a second open file: conflicts with any holder, this process too
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


_CACHE_LOCKS = CacheLockManager()


def cache_lock_manager() -> CacheLockManager:
    """This process's lock manager for cache keys."""
    return _CACHE_LOCKS
