"""The review queue: images a person should label, kept in the state folder (`$CXR_HOME/review/`).

One item per image content (sha256): the same image queued twice is one item. Each item keeps a copy of
the image (so it survives the source being moved) and of its Grad-CAM overlay, the model's answer, and
where it came from. An item moves `queued` -> `sent` (a Label Studio task) -> `returned` (pulled back:
`added` to a data folder, or `recorded` only for Not a chest X-ray / Unsure). SQLite makes every change
one transaction, so concurrent pushes, pulls and predictions never lose or double an item.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cxr.core.atomic_files import sha256_file, write_atomically
from cxr.core.errors import DataError
from cxr.core.state_folder import state_dir

QUEUED, SENT, RETURNED = "queued", "sent", "returned"
ADDED, RECORDED = "added", "recorded"  # outcomes of a returned item
STATES = (QUEUED, SENT, RETURNED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sha256 TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    decision TEXT NOT NULL,
    model_label TEXT,
    probability REAL,
    domain_score REAL,
    model_version TEXT NOT NULL,
    heatmap TEXT,
    queued_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    task_id INTEGER,
    sent_at TEXT,
    answer TEXT,
    reviewer TEXT,
    reviewed_at TEXT,
    outcome TEXT,
    added_as TEXT,
    returned_at TEXT
)
"""


class QueueItem(BaseModel):
    """One image waiting for (or back from) a reviewer."""

    sha256: str
    image: str  # the queue's copy of the image
    source: str  # where it was first queued from
    origin: str  # predict | manual
    decision: str  # why: refer, out_of_domain (cxr.model.referral), or manual
    model_label: str | None = None
    probability: float | None = None
    domain_score: float | None = None
    model_version: str
    heatmap: str | None = None
    queued_at: str
    state: str = QUEUED
    task_id: int | None = None
    sent_at: str | None = None
    answer: str | None = None
    reviewer: str | None = None
    reviewed_at: str | None = None
    outcome: str | None = None
    added_as: str | None = None
    returned_at: str | None = None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def review_dir() -> Path:
    return state_dir("review")


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """The queue database, in one transaction (committed on success), waiting up to 60 s for a writer."""
    connection = sqlite3.connect(review_dir() / "queue.db", timeout=60, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(_SCHEMA)
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


def _keep_copy(path: Path, sha256: str, folder: str) -> Path:
    """A copy of `path` in the queue's `folder`, named by the image content it belongs to."""
    copy = review_dir() / folder / f"{sha256}{path.suffix.lower()}"
    if not copy.is_file():
        write_atomically(copy, lambda partial: shutil.copyfile(path, partial))
    return copy


def enqueue(
    path: Path,
    *,
    origin: str,
    decision: str,
    model_version: str,
    model_label: str | None = None,
    probability: float | None = None,
    domain_score: float | None = None,
    heatmap: str | None = None,
) -> bool:
    """Queue the image at `path` unless its content is already an item; True when it was added."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    sha256 = sha256_file(path)
    with connect() as db:
        if db.execute("SELECT 1 FROM items WHERE sha256 = ?", (sha256,)).fetchone():
            return False
        image = _keep_copy(path, sha256, "images")
        overlay = (
            _keep_copy(Path(heatmap), sha256, "heatmaps") if heatmap and Path(heatmap).is_file() else None
        )
        item = QueueItem(
            sha256=sha256,
            image=str(image),
            source=str(path.resolve()),
            origin=origin,
            decision=decision,
            model_label=model_label,
            probability=probability,
            domain_score=domain_score,
            model_version=model_version,
            heatmap=str(overlay) if overlay else None,
            queued_at=now(),
        )
        fields = item.model_dump()
        db.execute(
            f"INSERT INTO items ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
            tuple(fields.values()),
        )
    return True


def items(state: str | None = None) -> list[QueueItem]:
    """The items (in one state, or all), oldest first."""
    with connect() as db:
        rows = db.execute(
            "SELECT * FROM items" + (" WHERE state = ?" if state else "") + " ORDER BY queued_at, sha256",
            (state,) if state else (),
        ).fetchall()
    return [QueueItem(**dict(row)) for row in rows]


def update(db: sqlite3.Connection, sha256: str, **changes: Any) -> None:
    """Change fields of one item inside the caller's transaction."""
    columns = ", ".join(f"{key} = ?" for key in changes)
    db.execute(f"UPDATE items SET {columns} WHERE sha256 = ?", (*changes.values(), sha256))


def counts() -> dict[str, int]:
    """Items per state, and the returned ones per outcome (every key always present)."""
    with connect() as db:
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
        by_outcome = dict(
            db.execute("SELECT outcome, COUNT(*) FROM items WHERE state = ? GROUP BY outcome", (RETURNED,))
        )
    return {
        **{state: int(by_state.get(state, 0)) for state in STATES},
        **{outcome: int(by_outcome.get(outcome, 0)) for outcome in (ADDED, RECORDED)},
    }
