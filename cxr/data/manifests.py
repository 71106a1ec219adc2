"""The ingest's output files: the manifest (Parquet) and the quarantine list (CSV), and reading them back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core.artifacts import WithArtifacts
from cxr.core.caching import sha256_text
from cxr.data.filelists import FileList, write_file_list
from cxr.data.imaging import FileCheck
from cxr.data.scanning import FoundFile

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


NEW_FILES_NAME = "new-files.parquet"


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
    # Accepted images this ingest checked (new or changed since the folder's previous ingest): data drift's input.
    new_files: FileList | None = None

    def is_intact(self) -> bool:
        """Whether the files a cached result points at are still there."""
        return Path(self.manifest_path).is_file() and Path(self.quarantine_path).is_file()


def write_new_files(manifest_path: Path, checked_paths: set[str]) -> FileList:
    """The manifest's images among the files an ingest checked (not reused from the previous one), listed
    next to the manifest."""
    manifest = pd.read_parquet(manifest_path, columns=["path"])
    new = manifest.loc[manifest["path"].isin(checked_paths)]
    return write_file_list(new, Path(manifest_path).with_name(NEW_FILES_NAME))


def manifest_digest(manifest: pd.DataFrame) -> str:
    """SHA-256 over sorted (sha256, label, source_split, patient_id): changes only with content or labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # One tab-joined line per file, built as Arrow columns (this runs over every file on each ingest).
    fields = [
        pc.fill_null(pa.array(manifest[name], from_pandas=True).cast(pa.string()), "")
        for name in ("sha256", "label", "source_split", "patient_id")
    ]
    rows = sorted(pc.binary_join_element_wise(*fields, "\t").to_pylist())
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
    return with_dtypes(pd.DataFrame(rows, columns=QUARANTINE_COLUMNS), QUARANTINE_DTYPES)


def with_dtypes(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """`frame` with the columns of `dtypes` cast, only those not already right: `astype` costs about
    a millisecond a call whatever the rows, and this runs several times on each ingest."""
    from pandas.api.types import pandas_dtype

    wrong = {name: dtype for name, dtype in dtypes.items() if frame[name].dtype != pandas_dtype(dtype)}
    return frame.astype(wrong) if wrong else frame


def checks_frame(checks: Iterable[FileCheck]) -> pd.DataFrame:
    """File checks as a CHECK_COLUMNS table (header facts empty for refused files)."""
    checks = list(checks)
    infos = [check.info for check in checks]
    columns = {
        "path": [check.path for check in checks],
        "sha256": [check.sha256 for check in checks],
        "width": pd.array([info.width if info else None for info in infos], dtype="Int64"),
        "height": pd.array([info.height if info else None for info in infos], dtype="Int64"),
        "mode": [info.mode if info else None for info in infos],
        "format": [info.format if info else None for info in infos],
        "reason": [check.reason for check in checks],
        "detail": [check.detail for check in checks],
    }
    return with_dtypes(pd.DataFrame(columns, columns=CHECK_COLUMNS), CHECK_DTYPES)


def write_manifest(manifest: pd.DataFrame, path: Path, patient_pattern: str) -> None:
    """Write `manifest` as Parquet, with the patient pattern its ids were parsed with (for the next run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(manifest, preserve_index=False, nthreads=1)  # no thread pool start-up
    metadata = {**(table.schema.metadata or {}), PATTERN_KEY: patient_pattern.encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def manifest_frame(accepted: pd.DataFrame) -> pd.DataFrame:
    """The manifest of `accepted` (candidate columns + check columns), sorted by path."""
    frame = accepted.sort_values("path", kind="stable", ignore_index=True)
    return with_dtypes(frame[MANIFEST_COLUMNS], MANIFEST_DTYPES)


def latest_manifest_index(manifests_dir: Path, data_dir: Path) -> Path:
    """The file in a state folder's `manifests/` that names the latest manifest of `data_dir`."""
    return manifests_dir / f"latest-{sha256_text(str(data_dir.resolve()))[:16]}.txt"
