"""What an incremental ingest reuses from the previous run: the checks of unchanged files, patient ids.

The previous manifest and the reusable rows of its quarantine list are read as Arrow columns and
joined to the scanned files by path in one vectorised lookup (`pyarrow.compute.index_in`); sizes
and mtimes are compared as NumPy arrays. No Python object is made per unchanged file: this runs
over every file of the folder on each incremental ingest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxr.data.imaging import CONTENT_FAILURES
from cxr.data.layouts import parse_patient_id
from cxr.data.manifests import CHECK_COLUMNS, PATTERN_KEY, QUARANTINE_COLUMNS, QUARANTINE_NAME, STAMP_COLUMNS

# The previous run's checks with the (path, size_bytes, mtime_ns) they were made for.
PREVIOUS_SCHEMA = pa.schema(
    [
        ("path", pa.large_string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("mode", pa.string()),
        ("format", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
_NUMBERS = ("size_bytes", "mtime_ns", "width", "height")
_CONTENT_FAILURES = pa.array(sorted(CONTENT_FAILURES), pa.string())


class PreviousRun(NamedTuple):
    """The previous run's checks (manifest rows, then reusable quarantine rows; PREVIOUS_SCHEMA) and,
    when they were parsed with the same pattern, its (path, patient_id) table."""

    checks: pa.Table
    patients: pa.Table | None


def previous_run(previous_manifest: Path | None, patient_pattern: str) -> PreviousRun:
    """What the previous run left to reuse. Unreadable files and path problems are always redone."""
    if previous_manifest is None or not Path(previous_manifest).is_file():
        return PreviousRun(PREVIOUS_SCHEMA.empty_table(), None)
    import pyarrow.parquet as pq  # what pandas would use; read directly for the file's metadata

    # `ParquetFile.read` in this thread: `read_table` imports `pyarrow.dataset` and Arrow's thread pool
    # starts on first use, each 20-40 ms, more than reading the few columns of a manifest costs.
    columns = [*STAMP_COLUMNS, *CHECK_COLUMNS[1:6], "patient_id"]
    table = pq.ParquetFile(previous_manifest).read(columns=columns, use_threads=False)
    same_pattern = (table.schema.metadata or {}).get(PATTERN_KEY) == patient_pattern.encode()
    patients = table.select(["path", "patient_id"]) if same_pattern else None
    rows = len(table)
    accepted = (
        table.drop_columns("patient_id")
        .append_column("reason", pa.nulls(rows, pa.string()))
        .append_column("detail", pa.array([""] * rows, pa.string()))
    )
    accepted = accepted.select(PREVIOUS_SCHEMA.names).cast(PREVIOUS_SCHEMA)
    quarantined = _reusable_quarantine(Path(previous_manifest).with_name(QUARANTINE_NAME))
    checks = pa.concat_tables([accepted, quarantined]) if quarantined is not None else accepted
    return PreviousRun(checks, patients)


def _reusable_quarantine(quarantine_path: Path) -> pa.Table | None:
    """The checks of the quarantine list worth reusing: files hashed (then refused for their size, as a
    copy or for their label; reused as passing checks) and content failures."""
    if not quarantine_path.is_file():
        return None
    import pyarrow.csv as csv

    text = {name: pa.string() for name in QUARANTINE_COLUMNS}
    refused = csv.read_csv(
        quarantine_path,
        read_options=csv.ReadOptions(use_threads=False),
        parse_options=csv.ParseOptions(newlines_in_values=True),
        convert_options=csv.ConvertOptions(
            column_types={**text, **{name: PREVIOUS_SCHEMA.field(name).type for name in _NUMBERS}},
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    hashed = pc.is_valid(refused["sha256"])
    content = pc.and_(pc.invert(hashed), pc.is_in(refused["reason"], value_set=_CONTENT_FAILURES))
    refused = refused.filter(pc.or_(hashed, content))
    if len(refused) == 0:
        return None
    hashed = pc.is_valid(refused["sha256"])
    reason = pc.if_else(hashed, pa.scalar(None, pa.string()), refused["reason"])
    detail = pc.if_else(hashed, "", pc.fill_null(refused["detail"], ""))
    columns = [name for name in PREVIOUS_SCHEMA.names if name not in ("reason", "detail")]
    table = refused.select(columns).append_column("reason", reason).append_column("detail", detail)
    return table.cast(PREVIOUS_SCHEMA)


def text_array(values: pd.Series) -> pa.Array:
    """A text column as an Arrow array (no copy for pandas' Arrow-backed strings)."""
    return pa.array(values, from_pandas=True).cast(pa.large_string())


def last_positions(wanted: pa.Array, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """For each of `wanted`, the position of its last occurrence in `keys`, or -1."""
    count = len(keys)
    if count == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    backwards = keys.take(pa.array(np.arange(count - 1, -1, -1)))  # so the first match is the last row
    found = pc.index_in(wanted.cast(keys.type), value_set=backwards).fill_null(count)
    return count - 1 - found.to_numpy(zero_copy_only=False).astype(np.int64)


def reused_checks(
    previous: PreviousRun, paths: pa.Array, sizes: np.ndarray, mtimes: np.ndarray
) -> pd.DataFrame:
    """The previous checks (CHECK_COLUMNS) of the files whose path, size and mtime are unchanged, in
    the files' order: a file rewritten in place is checked again."""
    checks = previous.checks
    positions = last_positions(paths, checks["path"])
    found = positions >= 0
    at = positions[found]
    same = np.zeros(len(positions), dtype=bool)
    same[found] = (checks["size_bytes"].to_numpy()[at] == sizes[found]) & (
        checks["mtime_ns"].to_numpy()[at] == mtimes[found]
    )
    taken = checks.select(CHECK_COLUMNS).take(pa.array(positions[same]))
    return taken.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def patient_ids(
    previous: PreviousRun, paths: pa.Array, relatives: Sequence[str], patient_pattern: str
) -> list[str | None]:
    """Each file's patient id: the previous run's (same pattern) where it has the path, else parsed."""
    pattern = re.compile(patient_pattern)
    if previous.patients is None or len(previous.patients) == 0:
        return [parse_patient_id(relative, pattern) for relative in relatives]
    positions = last_positions(paths, previous.patients["path"])
    known = previous.patients["patient_id"].take(pa.array(np.maximum(positions, 0))).to_pylist()
    return [
        patient if position >= 0 else parse_patient_id(relative, pattern)
        for patient, position, relative in zip(known, positions.tolist(), relatives, strict=True)
    ]
