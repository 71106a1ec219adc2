"""The ingest's output files: the manifest (Parquet) and the quarantine list (CSV), and reading them back."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from cxr.artifacts import WithArtifacts
from cxr.imaging import CONTENT_FAILURES, FileCheck
from cxr.layouts import parse_patient_id
from cxr.scanning import FoundFile

MANIFEST_NAME = "manifest.parquet"


QUARANTINE_NAME = "quarantine.csv"


# Parquet metadata of the manifest: the patient pattern its ids were parsed with.
PATTERN_KEY = b"cxr.patient_pattern"


MANIFEST_COLUMNS = [
    "path",
    "label",
    "patient_id",
    "width",
    "height",
    "mode",
    "format",
    "sha256",
    "source_split",
    "size_bytes",
    "mtime_ns",
]


# The columns that say a file is unchanged since it was checked.
STAMP_COLUMNS = ["path", "size_bytes", "mtime_ns"]


# One file's check: its digest and header facts, or why it was refused.
CHECK_COLUMNS = ["path", "sha256", "width", "height", "mode", "format", "reason", "detail"]
CHECK_DTYPES = {"width": "Int64", "height": "Int64"}
MANIFEST_DTYPES = {"width": "int64", "height": "int64", "size_bytes": "int64", "mtime_ns": "int64"}
QUARANTINE_DTYPES = {
    "size_bytes": "int64",
    "mtime_ns": "int64",
    "width": "Int64",
    "height": "Int64",
    "sha256": "string",
    "mode": "string",
}


# The contract is path, reason, detail; the rest lets the next run reuse checks of unchanged files.
QUARANTINE_COLUMNS = [
    "path",
    "reason",
    "detail",
    "size_bytes",
    "mtime_ns",
    "sha256",
    "width",
    "height",
    "mode",
    "format",
]


class IngestResult(WithArtifacts):
    """What `ingest_folder` wrote and what it found (the `ingest` stage adds its data report)."""

    manifest_path: str
    quarantine_path: str
    digest: str
    files_found: int
    accepted: int
    quarantined: int
    quarantined_by_reason: dict[str, int]
    per_class: dict[str, int]
    per_source_split: dict[str, dict[str, int]]
    duplicates: int
    elapsed_s: float
    reused: int

    def is_intact(self) -> bool:
        """Whether the files a cached result points at are still there."""
        return Path(self.manifest_path).is_file() and Path(self.quarantine_path).is_file()


def manifest_digest(manifest: pd.DataFrame) -> str:
    """SHA-256 over sorted (sha256, label, source_split, patient_id): changes only with content or labels."""
    fields = [
        manifest[name].fillna("").astype(str) for name in ("sha256", "label", "source_split", "patient_id")
    ]
    rows = sorted((fields[0] + "\t" + fields[1] + "\t" + fields[2] + "\t" + fields[3]).tolist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def quarantine_row(
    item: FoundFile, reason: str, detail: str, check: FileCheck | None = None
) -> dict[str, Any]:
    info = check.info if check is not None else None
    return {
        "path": item.path,
        "reason": reason,
        "detail": detail,
        "size_bytes": item.size_bytes,
        "mtime_ns": item.mtime_ns,
        "sha256": check.sha256 if check is not None else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "mode": info.mode if info else None,
        "format": info.format if info else None,
    }


def quarantine_frame(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Quarantine rows in QUARANTINE_COLUMNS, with the dtypes they keep through Parquet and CSV."""
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.astype(QUARANTINE_DTYPES)


def checks_frame(checks: Iterable[FileCheck]) -> pd.DataFrame:
    """File checks as a CHECK_COLUMNS table (header facts empty for refused files)."""
    checks = list(checks)
    infos = [check.info for check in checks]
    columns = {
        "path": [check.path for check in checks],
        "sha256": [check.sha256 for check in checks],
        "width": [info.width if info else None for info in infos],
        "height": [info.height if info else None for info in infos],
        "mode": [info.mode if info else None for info in infos],
        "format": [info.format if info else None for info in infos],
        "reason": [check.reason for check in checks],
        "detail": [check.detail for check in checks],
    }
    return pd.DataFrame(columns, columns=CHECK_COLUMNS).astype(CHECK_DTYPES)


class PreviousRun(NamedTuple):
    """What an ingest reuses from the previous one: its checks, with the (path, size_bytes, mtime_ns)
    they were made for, and its patient ids by path when they were parsed with the same pattern."""

    checks: pd.DataFrame
    patient_ids: dict[str, str | None]


def previous_run(previous_manifest: Path | None, patient_pattern: str) -> PreviousRun:
    """The previous run's checks and patient ids, read as whole columns (no object per file: this runs
    over every file on each incremental ingest). Unreadable files and path problems are always redone;
    where a path has two rows, the last one holds."""
    columns = [*STAMP_COLUMNS, *CHECK_COLUMNS[1:]]
    if previous_manifest is None or not Path(previous_manifest).is_file():
        return PreviousRun(pd.DataFrame(columns=columns).astype(CHECK_DTYPES), {})
    import pyarrow.parquet as pq  # what pandas would use; read directly for the file's metadata

    # `ParquetFile.read` in this thread: `read_table` imports `pyarrow.dataset` and Arrow's thread pool
    # starts on first use, each 20-40 ms, more than reading the few columns of a manifest costs.
    columns = [*STAMP_COLUMNS, *CHECK_COLUMNS[1:6], "patient_id"]
    table = pq.ParquetFile(previous_manifest).read(columns=columns, use_threads=False)
    same_pattern = (table.schema.metadata or {}).get(PATTERN_KEY) == patient_pattern.encode()
    patient_ids = (
        dict(zip(table["path"].to_pylist(), table["patient_id"].to_pylist(), strict=True))
        if same_pattern
        else {}
    )
    accepted = table.drop_columns("patient_id").to_pandas(use_threads=False)
    accepted["reason"], accepted["detail"] = None, ""
    return PreviousRun(
        _with_quarantined(accepted, Path(previous_manifest).with_name(QUARANTINE_NAME)), patient_ids
    )


def _with_quarantined(accepted: pd.DataFrame, quarantine_path: Path) -> pd.DataFrame:
    """`accepted` and the checks of the quarantine list worth reusing: files hashed (then refused for
    their size, as a copy or for their label) and content failures."""
    if not quarantine_path.is_file():
        return accepted
    refused = pd.read_csv(quarantine_path, dtype=QUARANTINE_DTYPES, keep_default_na=False, na_values=[""])
    hashed = refused["sha256"].notna()
    content = ~hashed & refused["reason"].isin(CONTENT_FAILURES)
    if not (hashed | content).any():
        return accepted
    refused["detail"] = refused["detail"].fillna("")
    refused.loc[hashed, ["reason", "detail"]] = None, ""
    # A path in both (it cannot be, unless edited by hand): the quarantine's row comes last and wins.
    return pd.concat([accepted, refused.loc[hashed | content, accepted.columns]], ignore_index=True)


def patient_ids(
    paths: list[str], relatives: list[str], patient_pattern: str, known: dict[str, str | None]
) -> list[str | None]:
    """Each file's patient id: `known` (the previous run's, same pattern) where it has the path, else parsed."""
    pattern = re.compile(patient_pattern)
    return [
        known[path] if path in known else parse_patient_id(relative, pattern)
        for path, relative in zip(paths, relatives, strict=True)
    ]


def write_manifest(manifest: pd.DataFrame, path: Path, patient_pattern: str) -> None:
    """Write `manifest` as Parquet, with the patient pattern its ids were parsed with (for the next run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(manifest, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), PATTERN_KEY: patient_pattern.encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def manifest_frame(accepted: pd.DataFrame) -> pd.DataFrame:
    """The manifest of `accepted` (candidate columns + check columns), sorted by path."""
    frame = accepted.sort_values("path", kind="stable", ignore_index=True)
    return frame[MANIFEST_COLUMNS].astype(MANIFEST_DTYPES)
