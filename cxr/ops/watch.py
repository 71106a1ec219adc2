"""Watch an inbox folder and announce settled new files as ONE Prefect event `cxr.data.arrived`.

The `on-new-data` deployment (deployments/serve.py) is triggered by that event. A burst of files
(a copy of 500 images) is one event: the watcher waits until the folder's listing has not changed
for `settle_s` seconds. What was announced is remembered in the state folder, so a restart does not
announce the same files again.

Debounce (trailing edge): at most one event per inbox per `debounce_s`. Files that settle inside the
window are held and announced when it ends, so the `on-new-data` trigger (same window, measured from
each event's `occurred` time) never sees an event early and never drops one. The time of the last
event is kept in the state folder, so a restarted watcher honours the window too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cxr.core.errors import DataError
from cxr.core.state_folder import state_dir

DATA_ARRIVED_EVENT = "cxr.data.arrived"
INBOX_RESOURCE_PREFIX = "cxr.inbox."
# Files still being written by common copy tools; announced once they are renamed.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download")
# Seconds between two events of one inbox; `cxr serve --debounce` uses the same default.
DEFAULT_DEBOUNCE_S = 600.0

Snapshot = dict[str, tuple[int, int]]  # relative path -> (size in bytes, mtime in ns)
Emitter = Callable[[Path, int], object]

log = logging.getLogger(__name__)


def inbox_resource_id(inbox: Path) -> str:
    """Stable Prefect resource id of an inbox folder, e.g. `cxr.inbox.3f2a9c1b7d4e`."""
    return INBOX_RESOURCE_PREFIX + hashlib.sha256(str(inbox.resolve()).encode()).hexdigest()[:12]


def snapshot(inbox: Path) -> Snapshot:
    """Size and mtime of every finished file under `inbox` (hidden and partial files skipped)."""
    entries: Snapshot = {}
    for root, dirs, files in os.walk(inbox):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or name.endswith(PARTIAL_SUFFIXES):
                continue
            path = Path(root, name)
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed between listing and stat
                continue
            entries[str(path.relative_to(inbox))] = (stat.st_size, stat.st_mtime_ns)
    return entries


def new_or_changed(current: Snapshot, announced: Snapshot) -> int:
    """Number of files in `current` that were not announced with the same size and mtime."""
    return sum(1 for path, stamp in current.items() if announced.get(path) != stamp)


def _state_file(inbox: Path) -> Path:
    return state_dir("watch") / f"{inbox_resource_id(inbox)}.json"


def _load_state(inbox: Path) -> dict:
    path = _state_file(inbox)
    return json.loads(path.read_text()) if path.exists() else {}


def load_announced(inbox: Path) -> Snapshot:
    return {name: tuple(stamp) for name, stamp in _load_state(inbox).get("files", {}).items()}


def last_announced_at(inbox: Path) -> float | None:
    """Wall-clock time (epoch seconds) of the inbox's last event, None before the first one."""
    return _load_state(inbox).get("announced_at")


def save_announced(inbox: Path, files: Snapshot, announced_at: float) -> None:
    path = _state_file(inbox)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"inbox": str(inbox.resolve()), "files": files, "announced_at": announced_at}))
    tmp.replace(path)  # atomic: a crash never leaves half a state file


def emit_data_arrived(inbox: Path, new_files: int) -> None:
    """Send `cxr.data.arrived` for `inbox` to the Prefect API and wait until it is delivered."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.warning(
            "PREFECT_API_URL is not set: the event goes to a temporary server no deployment listens on"
        )
    emit_event(
        event=DATA_ARRIVED_EVENT,
        resource={"prefect.resource.id": inbox_resource_id(inbox), "prefect.resource.name": inbox.name},
        payload={"data_dir": str(inbox.resolve()), "new_files": new_files},
    )
    # The events client sends from a background thread; flush now so a short-lived watcher loses nothing.
    EventsWorker.drain_all()


def watch_inbox(
    inbox: Path,
    *,
    settle_s: float = 30.0,
    poll_s: float = 5.0,
    debounce_s: float = DEFAULT_DEBOUNCE_S,
    once: bool = False,
    timeout_s: float | None = None,
    emit: Emitter = emit_data_arrived,
) -> int:
    """Poll `inbox` every `poll_s` seconds; emit one event per settled batch of new or changed files.

    A batch has settled when the listing has not changed for `settle_s` seconds. A batch that settles
    less than `debounce_s` after the last event waits for the window to end, then goes out as one event
    with everything new by then. Returns the number of events emitted: after the first one when `once`,
    after `timeout_s` seconds, or on Ctrl-C (held files stay unannounced and a restart announces them).
    """
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise DataError(f"inbox folder not found: {inbox}")
    announced = load_announced(inbox)
    last_at = last_announced_at(inbox)
    next_allowed_at = float("-inf") if last_at is None else last_at + debounce_s
    holding = False
    previous: Snapshot | None = None
    changed_at = started = time.monotonic()
    emitted = 0
    log.info("watching %s (settle %.1f s, poll %.1f s)", inbox, settle_s, poll_s)
    try:
        while timeout_s is None or time.monotonic() - started < timeout_s:
            current = snapshot(inbox)
            now = time.monotonic()
            if current != previous:
                previous, changed_at = current, now
            pending = new_or_changed(current, announced)
            if pending and now - changed_at >= settle_s:
                wait_s = next_allowed_at - time.time()
                if wait_s > 0:
                    if not holding:
                        log.info(
                            "holding %d new file(s) until the debounce window ends in %.0f s", pending, wait_s
                        )
                    holding = True
                else:
                    emit(inbox, pending)
                    # Taken after the emit, so the next event's `occurred` is a full window later.
                    announced_at = time.time()
                    emitted += 1
                    announced, holding = current, False
                    next_allowed_at = announced_at + debounce_s
                    save_announced(inbox, announced, announced_at)
                    log.info("announced %d new file(s) in %s", pending, inbox)
                    if once:
                        break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log.info("stopped watching %s", inbox)
    return emitted
