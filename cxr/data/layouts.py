"""Folder layouts and labels: where a file's class, source split and patient id come from."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr import CLASSES
from cxr.data.scanning import FoundFile

# Kaggle: person12_bacteria_45 -> person12, IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427.
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>person\d+|(?:NORMAL\d*-)?IM-\d+)(?:[_-]|$)"


SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


UNKNOWN_CLASS_HINTS = {
    "kaggle": "not under <train|val|test>/<NORMAL|PNEUMONIA>/ (Kaggle layout detected)",
    "bare": "not under NORMAL/ or PNEUMONIA/ (class-folder layout detected)",
    "flat": "flat layout: a top-level file whose name contains exactly one of 'normal', 'pneumonia'",
}


@dataclass(frozen=True)
class Labelled:
    """Where a file's label and source split come from; `label` None means no known class."""

    label: str | None
    source_split: str | None


def detect_layout(files: list[FoundFile]) -> str:
    """'kaggle' (split/class folders), 'bare' (class folders) or 'flat' (class in file names)."""
    top_folders = {item.relative.split("/")[0].lower() for item in files if "/" in item.relative}
    if top_folders & SPLIT_FOLDERS.keys():
        return "kaggle"
    if top_folders & set(CLASSES):
        return "bare"
    return "flat"


def label_for(relative: str, layout: str) -> Labelled:
    """Label and source split of one file from its relative path under the given layout."""
    parts = relative.split("/")
    folders = [part.lower() for part in parts[:-1]]
    if layout == "kaggle":
        if len(folders) >= 2 and folders[0] in SPLIT_FOLDERS and folders[1] in CLASSES:
            return Labelled(folders[1], SPLIT_FOLDERS[folders[0]])
        return Labelled(None, None)
    if layout == "bare":
        return Labelled(folders[0] if folders and folders[0] in CLASSES else None, None)
    # Flat: only top-level files, so a wrapper folder around a Kaggle tree is not half-labelled by name.
    named = [label for label in CLASSES if label in parts[-1].lower()]
    return Labelled(named[0] if len(named) == 1 and not folders else None, None)


def label_all(files: list[FoundFile], layout: str) -> list[Labelled]:
    """`label_for` of every file; in folder layouts a label depends only on the folder, so once per folder."""
    if layout == "flat":
        return [label_for(item.relative, layout) for item in files]
    by_folder: dict[str, Labelled] = {}
    labels = []
    for item in files:
        folder = item.relative.rpartition("/")[0]
        if folder not in by_folder:
            by_folder[folder] = label_for(item.relative, layout)
        labels.append(by_folder[folder])
    return labels


def parse_patient_id(file_name: str, pattern: str | re.Pattern[str] = DEFAULT_PATIENT_PATTERN) -> str | None:
    """Patient id from a file's stem by the regex group `patient` (else group 1); None if no match."""
    match = re.match(pattern, _stem(file_name))
    if match is None:
        return None
    return match.group("patient") if "patient" in match.re.groupindex else match.group(1)


def _stem(file_name: str) -> str:
    """`Path(file_name).stem` without building a Path (called once per manifest row)."""
    name = file_name.rpartition("/")[2]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name
