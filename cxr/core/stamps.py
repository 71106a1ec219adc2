"""File stamps: a file's SHA-256 plus the size and mtime it had when hashed.

Checking a stamp re-reads the file only when its size or mtime changed since: a cached rerun over
thousands of shards costs one `stat` per file, and a file that was rewritten or touched is hashed
in full (and refused when its bytes differ).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from cxr.core.atomic_files import sha256_file


class FileStamp(BaseModel):
    path: str
    sha256: str
    size: int
    mtime_ns: int

    @model_serializer(mode="wrap")
    def _content_only_in_cache_keys(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):
        """In a cache key (`cxr.core.caching.stable_json` passes the context `content_key`), a stamp stands for
        the bytes it vouches for: a file rewritten with the same bytes keys the same results."""
        data = handler(self)
        if info.context and info.context.get("content_key"):
            data.pop("mtime_ns", None)
        return data

    @classmethod
    def of(cls, path: Path | str) -> FileStamp:
        """Hash `path` now; the stat is taken before hashing, so a write during hashing fails `verify`."""
        status = os.stat(path)
        return cls(path=str(path), sha256=sha256_file(path), size=status.st_size, mtime_ns=status.st_mtime_ns)

    def verify(self) -> bool:
        """Whether the file still holds the stamped bytes: size + mtime unchanged, else a full re-hash."""
        try:
            status = os.stat(self.path)
            if status.st_size != self.size:
                return False
            return status.st_mtime_ns == self.mtime_ns or sha256_file(self.path) == self.sha256
        except OSError:
            return False
