"""Reviewed images in a data folder: one provenance record per image a person labelled.

`cxr review pull` writes a reviewed image into the data folder's class folder and, beside the images,
`<data folder>/.cxr-review/<sha256>.json` saying who labelled it, when, in which Label Studio task, and
what the model that referred it had answered. The split reads these records (by content, so a renamed
or moved file is still known) to keep reviewed images out of the test split: they were chosen for the
model's uncertainty and would bias it. Ingest and prediction skip the records folder (not images).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from cxr import CLASSES
from cxr.data.layouts import SPLIT_FOLDERS
from cxr.data.scanning import RECORDS_FOLDER

RECORD_SUFFIX = ".json"


class ReviewRecord(BaseModel):
    """Where a reviewed image came from and who answered it."""

    sha256: str
    label: str  # the reviewer's class (cxr.CLASSES)
    file: str  # the image's path relative to the data folder, as first written
    reviewer: str
    reviewed_at: str
    task_id: int
    model_version: str  # the model that referred it (models:/NAME/N, or the URI it was called with)
    model_answer: str | None  # that model's label for it (None when it gave none)
    decision: str  # why it was referred: refer or out_of_domain
    probability: float | None = None


def records_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RECORDS_FOLDER


def reviewed_image_path(data_dir: Path, label: str, sha256: str, suffix: str) -> Path:
    """Where a reviewed image of class `label` goes so that ingest reads that label in the folder's layout:
    `train/<CLASS>/` (split folders), `<CLASS>/` (class folders, or an empty folder), or, among files
    named by class (flat), `reviewed-<label>-...` at the top. Named by content: one file per image."""
    data_dir = Path(data_dir)
    folders = {path.name.lower(): path for path in data_dir.iterdir() if path.is_dir()}
    folders.pop(RECORDS_FOLDER, None)
    name = f"reviewed-{sha256[:16]}{suffix.lower()}"
    if folders.keys() & SPLIT_FOLDERS.keys():
        parent = folders.get("train", data_dir / "train")
        existing = (
            {path.name.lower(): path for path in parent.iterdir() if path.is_dir()} if parent.is_dir() else {}
        )
        return existing.get(label, parent / label.upper()) / name
    if folders.keys() & set(CLASSES) or not any(path.is_file() for path in data_dir.iterdir()):
        return folders.get(label, data_dir / label.upper()) / name
    return data_dir / f"reviewed-{label}-{sha256[:16]}{suffix.lower()}"


def write_record(data_dir: Path, record: ReviewRecord) -> bool:
    """Write the image's record unless one exists; False when another pull (or an earlier one) did.

    `O_EXCL` makes the record the claim: of two pulls at once, exactly one writes it.
    """
    folder = records_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(
            folder / f"{record.sha256}{RECORD_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
        )
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as out:
        out.write(record.model_dump_json(indent=1))
    return True


def read_records(data_dir: Path | str) -> dict[str, ReviewRecord]:
    """Every reviewed image's record in the data folder, by sha256 (none for a folder without reviews)."""
    folder = records_dir(Path(data_dir))
    if not folder.is_dir():
        return {}
    records = {}
    for path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
        try:
            record = ReviewRecord.model_validate_json(path.read_text())
        except (OSError, ValueError):  # a half-copied or hand-edited record: the image counts as unreviewed
            continue
        records[record.sha256] = record
    return records


def records_digest(records: dict[str, ReviewRecord]) -> str:
    """What of the records decides a split: the set of reviewed contents."""
    return json.dumps(sorted(records))


def reviewed_summary(split: pd.DataFrame, records: dict[str, ReviewRecord]) -> dict[str, int]:
    """Reviewed images in the split: how many, per split, and how many the referring model answered
    differently from the reviewer (`cxr train --json`'s `reviewed`, the model card's count)."""
    rows = split[split["sha256"].isin(list(records))].drop_duplicates("sha256")
    per_split = rows["split"].value_counts()
    differently = sum(
        1 for sha in rows["sha256"] if records[sha].model_answer not in (None, records[sha].label)
    )
    return {
        "images": len(rows),
        "in_train": int(per_split.get("train", 0)),
        "in_valid": int(per_split.get("valid", 0)),
        "in_test": int(per_split.get("test", 0)),
        "answered_differently": differently,
    }
