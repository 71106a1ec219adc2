"""An ingest plan (`IngestPlan`) and its chunks' checks on disk, so ingest's tasks pass paths and digests, not file lists.

`store_plan` writes an `IngestPlan`'s tables as Parquet files (candidates, reused checks, files refused
without opening) and the files to check as one Parquet list per chunk; the `StoredPlan` it returns
names them by path and digest and stays the same size whatever the number of files, as do the chunk
lists and check tables passed between the mapped tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
from pydantic import BaseModel

from cxr.data.filelists import FileList, write_file_list
from cxr.data.imaging import FileCheck
from cxr.data.ingest_reuse import text_array
from cxr.data.manifests import CHECK_DTYPES, STAMP_COLUMNS, checks_frame, quarantine_frame

# Files per mapped `check_chunk` task: big enough that task overhead stays small next to decoding.
MAP_CHUNK_SIZE = 256
# Past MAP_CHUNK_SIZE x this, chunks grow instead: every task run is several writes to the Prefect
# server, and 157 of them at once (a cached rerun on 40k images) kept its SQLite database busy
# enough to answer 503, and the run waited out the client's 2-6 s back-off. On PostgreSQL the lifted cap
# completed but ran slower (docs/scale.md): chunks past the worker threads only add API calls.
MAX_MAP_CHUNKS = 64

# A candidate: a file with a label and no problem found without opening it.
CANDIDATE_COLUMNS = ["path", "relative", "size_bytes", "mtime_ns", "label", "source_split", "patient_id"]
CANDIDATE_DTYPES = {"size_bytes": "int64", "mtime_ns": "int64"}


@dataclass(frozen=True, eq=False)
class IngestPlan:
    """A scanned folder: files refused without opening, files to use, checks reused, files to check.

    Built by `plan_folder`, completed by `assemble_manifest` once the `todo` files are checked. The
    lists are tables (QUARANTINE_COLUMNS, CANDIDATE_COLUMNS, CHECK_COLUMNS): an incremental ingest
    carries the unchanged files' checks over as whole columns, with no Python object per file.
    """

    data_dir: str
    out_dir: str
    min_side: int
    patient_pattern: str
    files_found: int
    quarantine: pd.DataFrame
    candidates: pd.DataFrame
    reused: pd.DataFrame
    scan_s: float

    @property
    def todo(self) -> pd.DataFrame:
        """(path, size_bytes, mtime_ns) of the candidates without a reusable check from the previous run."""
        reused = pc.is_in(text_array(self.candidates["path"]), value_set=text_array(self.reused["path"]))
        fresh = ~reused.to_numpy(zero_copy_only=False)
        return self.candidates.loc[fresh, STAMP_COLUMNS].reset_index(drop=True)

    def chunks(self, size: int | None = None) -> list[list[tuple[str, int, int]]]:
        """The `todo` files as (path, size, mtime_ns) lists of at most `size` files (default:
        MAP_CHUNK_SIZE, or as many as keep the lists to MAX_MAP_CHUNKS)."""
        stamps = list(self.todo.itertuples(index=False, name=None))
        size = size or max(MAP_CHUNK_SIZE, math.ceil(len(stamps) / MAX_MAP_CHUNKS))
        return [stamps[start : start + size] for start in range(0, len(stamps), size)]


CHUNK_COLUMNS = STAMP_COLUMNS
# The plan's fields that are single values, stored as they are.
PLAN_SCALARS = ("data_dir", "out_dir", "min_side", "patient_pattern", "files_found", "scan_s")


class StoredPlan(BaseModel):
    """An `IngestPlan` whose lists live in Parquet files; `chunk_lists` lists the chunks' file lists."""

    data_dir: str
    out_dir: str
    min_side: int
    patient_pattern: str
    files_found: int
    scan_s: float
    todo: int
    reused: int
    candidates: FileList
    reused_checks: FileList
    quarantine: FileList
    chunk_lists: FileList

    def chunks(self) -> list[FileList]:
        """Each chunk's (path, size_bytes, mtime_ns) list of files to check."""
        return [FileList(**row) for row in _rows(self.chunk_lists)]

    def load(self) -> IngestPlan:
        """The plan in memory again, for `assemble_manifest`."""
        return IngestPlan(
            **{name: getattr(self, name) for name in PLAN_SCALARS},
            quarantine=quarantine_frame(self.quarantine.read()),
            candidates=self.candidates.read().astype(CANDIDATE_DTYPES),
            reused=self.reused_checks.read().astype(CHECK_DTYPES),
        )

    def is_intact(self) -> bool:
        """Whether every list it names is unchanged (one `stat` each)."""
        lists = [self.candidates, self.reused_checks, self.quarantine, self.chunk_lists]
        return all(item.verify() for item in lists) and all(chunk.verify() for chunk in self.chunks())


def _rows(listed: FileList) -> list[dict]:
    """The list's rows as dicts of plain Python values (nulls as None)."""
    frame = listed.read()
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def store_plan(plan: IngestPlan, folder: Path) -> StoredPlan:
    """Write the plan's lists under `folder`, the files to check as `plan.chunks()` cuts them."""
    folder = Path(folder)
    chunks = [
        write_file_list(pd.DataFrame(chunk, columns=CHUNK_COLUMNS), folder / f"chunk-{number:05d}.parquet")
        for number, chunk in enumerate(plan.chunks())
    ]
    chunk_lists = pd.DataFrame([chunk.model_dump() for chunk in chunks], columns=list(FileList.model_fields))
    return StoredPlan(
        **{name: getattr(plan, name) for name in PLAN_SCALARS},
        todo=sum(chunk.rows for chunk in chunks),
        reused=len(plan.reused),
        candidates=write_file_list(plan.candidates, folder / "candidates.parquet"),
        reused_checks=write_file_list(plan.reused, folder / "reused.parquet"),
        quarantine=write_file_list(plan.quarantine, folder / "quarantine.parquet"),
        chunk_lists=write_file_list(chunk_lists, folder / "chunks.parquet"),
    )


def write_checks(checks: Iterable[FileCheck], path: Path) -> FileList:
    """File checks as a Parquet table (header facts empty for refused files)."""
    return write_file_list(checks_frame(checks), path)


def read_checks(lists: Iterable[FileList]) -> pd.DataFrame:
    """The checks `write_checks` wrote to `lists`, as one CHECK_COLUMNS table for `assemble_manifest`."""
    frames = [listed.read() for listed in lists]
    return pd.concat(frames, ignore_index=True).astype(CHECK_DTYPES) if frames else checks_frame([])
