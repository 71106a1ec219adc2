"""An ingest plan and its chunks' checks on disk, so ingest's tasks pass paths and digests, not file lists.

`store_plan` writes an `IngestPlan`'s tables as Parquet files (candidates, reused checks, files refused
without opening) and the files to check as one Parquet list per chunk; the `StoredPlan` it returns
names them by path and digest and stays the same size whatever the number of files, as do the chunk
lists and check tables passed between the mapped tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from cxr.filelists import FileList, write_file_list
from cxr.imaging import FileCheck
from cxr.ingesting import CANDIDATE_DTYPES, IngestPlan
from cxr.manifests import CHECK_DTYPES, STAMP_COLUMNS, checks_frame, quarantine_frame

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
