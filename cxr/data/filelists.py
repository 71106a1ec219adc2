"""File lists as Parquet files, passed between tasks as (path, digest, rows) instead of JSON lists.

A task result or cache key then stays the same size whatever the number of files: the list itself
is written once, atomically, and the reader refuses a file whose bytes differ from the digest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.core.atomic_files import write_atomically
from cxr.core.errors import DataError
from cxr.core.stamps import FileStamp


class FileList(FileStamp):
    """A Parquet table of files; `sha256` (with the stamp's fast path) vouches for its content."""

    rows: int

    def is_intact(self) -> bool:
        return self.verify()

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        if not self.verify():
            raise DataError(f"file list {self.path} is missing or changed since it was written")
        return pd.read_parquet(self.path, columns=columns)


def write_file_list(frame: pd.DataFrame, path: Path) -> FileList:
    """Write `frame` (index dropped) to `path` atomically and stamp it."""
    write_atomically(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))
    return FileList(**FileStamp.of(path).model_dump(), rows=len(frame))
