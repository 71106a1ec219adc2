"""The ingest's output files: the manifest (Parquet) and the quarantine list (CSV), and reading them back."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.artifacts import WithArtifacts
from cxr.imaging import CONTENT_FAILURES, FileCheck, ImageInfo
from cxr.layouts import Labelled, parse_patient_id
from cxr.scanning import FoundFile

MANIFEST_NAME = "manifest.parquet"


QUARANTINE_NAME = "quarantine.csv"


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
    columns = [manifest[name].tolist() for name in ("sha256", "label", "source_split", "patient_id")]
    rows = sorted(
        "\t".join("" if value is None or value is pd.NA else str(value) for value in row)
        for row in zip(*columns, strict=True)
    )
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


def previous_checks(previous_manifest: Path | None) -> dict[tuple[str, int, int], FileCheck]:
    """Checks from the previous run keyed by (path, size, mtime); unreadable ones are always redone."""
    if previous_manifest is None or not Path(previous_manifest).is_file():
        return {}
    import pyarrow.parquet as pq  # what pandas would use; read directly, as plain column lists

    # Column lists zipped, not a dict per row: this runs over every file on each incremental ingest.
    manifest = pq.read_table(previous_manifest, columns=MANIFEST_COLUMNS).to_pydict()
    infos = map(ImageInfo, manifest["width"], manifest["height"], manifest["mode"], manifest["format"])
    reusable = dict(
        zip(
            zip(manifest["path"], manifest["size_bytes"], manifest["mtime_ns"], strict=True),
            map(FileCheck, manifest["path"], manifest["sha256"], infos),
            strict=True,
        )
    )
    previous_quarantine = Path(previous_manifest).with_name(QUARANTINE_NAME)
    if not previous_quarantine.is_file():
        return reusable
    frame = pd.read_csv(previous_quarantine, dtype={"sha256": "string", "mode": "string"})
    for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
        key = (row["path"], int(row["size_bytes"]), int(row["mtime_ns"]))
        if row.get("sha256"):
            info = ImageInfo(int(row["width"]), int(row["height"]), str(row["mode"]), str(row["format"]))
            reusable[key] = FileCheck(row["path"], row["sha256"], info)
        elif row.get("reason") in CONTENT_FAILURES:
            reusable[key] = FileCheck(row["path"], reason=row["reason"], detail=row["detail"] or "")
    return reusable


def manifest_frame(
    accepted: list[tuple[FoundFile, Labelled, FileCheck]], patient_pattern: str
) -> pd.DataFrame:
    # Sorted by path first, then built column by column: no dict or Path per row.
    accepted = sorted(accepted, key=lambda entry: entry[0].path)
    pattern = re.compile(patient_pattern)
    columns = {
        "path": [item.path for item, _, _ in accepted],
        "label": [labelled.label for _, labelled, _ in accepted],
        "patient_id": [parse_patient_id(item.relative, pattern) for item, _, _ in accepted],
        "width": [check.info.width for _, _, check in accepted],
        "height": [check.info.height for _, _, check in accepted],
        "mode": [check.info.mode for _, _, check in accepted],
        "format": [check.info.format for _, _, check in accepted],
        "sha256": [check.sha256 for _, _, check in accepted],
        "source_split": [labelled.source_split for _, labelled, _ in accepted],
        "size_bytes": [item.size_bytes for item, _, _ in accepted],
        "mtime_ns": [item.mtime_ns for item, _, _ in accepted],
    }
    frame = pd.DataFrame(columns, columns=MANIFEST_COLUMNS)
    return frame.astype({"width": "int64", "height": "int64", "size_bytes": "int64", "mtime_ns": "int64"})
