"""Stage `ingest`: scan an image folder, label every file, check it, and write the manifest.

Every file found ends up either in the manifest (Parquet) or in the quarantine list (CSV) with a
reason, so `files_found == accepted + quarantined` always holds. Checking (full decode + SHA-256) is
skipped for files whose (path, size, mtime) match the previous run.

Three pure steps: `plan_folder` (scan, label, reuse) -> `check_paths` -> `assemble_manifest` (minimum
side, duplicates, files written). `ingest_folder` runs them in one call, checking in worker processes;
the flow runs them as tasks `plan_ingest` -> `check_chunk` mapped over chunks (on the flow's task
runner: threads, or a Dask cluster) -> `assemble_ingest`.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import math
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel

from cxr import CLASSES
from cxr.caching import ContentKey, sha256_text
from cxr.errors import CxrError, DataError
from cxr.files import write_atomically
from cxr.imaging import (
    CONTENT_FAILURES,
    BadImage,
    FileCheck,
    ImageInfo,
    check_file,
    check_files,
    check_min_side,
)
from cxr.state import state_dir

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
# Kaggle: person12_bacteria_45 -> person12, IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427.
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>person\d+|(?:NORMAL\d*-)?IM-\d+)(?:[_-]|$)"
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
UNKNOWN_CLASS_HINTS = {
    "kaggle": "not under <train|val|test>/<NORMAL|PNEUMONIA>/ (Kaggle layout detected)",
    "bare": "not under NORMAL/ or PNEUMONIA/ (class-folder layout detected)",
    "flat": "flat layout: a top-level file whose name contains exactly one of 'normal', 'pneumonia'",
}
# Below this many files to check, a process pool costs more than it saves.
POOL_MIN_FILES = 200
POOL_CHUNK_SIZE = 64
# Files per mapped `check_chunk` task: big enough that task overhead stays small next to decoding.
MAP_CHUNK_SIZE = 256
QUARANTINE_TABLE_ROWS = 500

logger = logging.getLogger(__name__)


class IngestResult(BaseModel):
    """What `ingest_folder` wrote and what it found."""

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


@dataclass(frozen=True)
class FoundFile:
    """One entry of the folder scan; `problem` is a (reason, detail) found without opening it."""

    path: str
    relative: str
    size_bytes: int
    mtime_ns: int
    problem: tuple[str, str] | None = None


@dataclass(frozen=True)
class Labelled:
    """Where a file's label and source split come from; `label` None means no known class."""

    label: str | None
    source_split: str | None


def display_path(path: str) -> str:
    """`path` as valid UTF-8 text (undecodable bytes shown as backslash escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_folder(root: Path) -> list[FoundFile]:
    """Every non-directory entry under `root`, sorted by relative path.

    Directory symlinks are followed once; a directory reached again (a cycle) is reported as
    `symlink_loop`, dangling links as `broken_symlink`, undecodable names as `bad_filename`.
    """
    root = Path(root)
    return sorted(_walk(root, "", {_dir_identity(root)}), key=lambda item: item.relative)


def _dir_identity(path: Path | str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _walk(directory: Path | str, prefix: str, visited: set[tuple[int, int]]) -> Iterator[FoundFile]:
    try:
        entries = sorted(os.scandir(directory), key=lambda item: item.name)
    except OSError as error:
        yield _problem(str(directory), prefix or ".", "unreadable", f"folder cannot be listed: {error}")
        return
    for entry in entries:
        relative = f"{prefix}{entry.name}"
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False  # dangling or looping link: described as a file
        if not is_dir:
            yield _describe(entry, relative)
            continue
        identity = _dir_identity(entry.path)
        if identity in visited:
            yield _problem(entry.path, relative, "symlink_loop", "folder link leads back into the scan")
            continue
        visited.add(identity)
        yield from _walk(entry.path, f"{relative}/", visited)


def _problem(path: str, relative: str, reason: str, detail: str, size: int = 0, mtime: int = 0) -> FoundFile:
    return FoundFile(display_path(path), display_path(relative), size, mtime, (reason, detail))


def _describe(entry: os.DirEntry, relative: str) -> FoundFile:
    try:
        stat = entry.stat(follow_symlinks=True)
    except OSError as error:
        link = entry.stat(follow_symlinks=False)
        if error.errno == errno.ELOOP:
            reason, detail = "symlink_loop", "link resolves to itself"
        elif entry.is_symlink():
            reason, detail = "broken_symlink", f"link target missing: {os.readlink(entry.path)!r}"
        else:
            reason, detail = "unreadable", str(error)
        return _problem(entry.path, relative, reason, detail, link.st_size, link.st_mtime_ns)
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return _problem(
            entry.path,
            relative,
            "bad_filename",
            "file name is not valid UTF-8; rename it",
            stat.st_size,
            stat.st_mtime_ns,
        )
    if not entry.is_file():
        return _problem(
            entry.path, relative, "not_an_image", "not a regular file", stat.st_size, stat.st_mtime_ns
        )
    return FoundFile(entry.path, relative, stat.st_size, stat.st_mtime_ns)


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


def _label_all(files: list[FoundFile], layout: str) -> list[Labelled]:
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


def manifest_digest(manifest: pd.DataFrame) -> str:
    """SHA-256 over sorted (sha256, label, source_split, patient_id): changes only with content or labels."""
    columns = [manifest[name].tolist() for name in ("sha256", "label", "source_split", "patient_id")]
    rows = sorted(
        "\t".join("" if value is None or value is pd.NA else str(value) for value in row)
        for row in zip(*columns, strict=True)
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@dataclass(frozen=True)
class IngestPlan:
    """A scanned folder: files refused without opening, files to use, checks reused, files to check.

    Built by `plan_folder`, completed by `assemble_manifest` once the `todo` files are checked.
    """

    data_dir: str
    out_dir: str
    min_side: int
    patient_pattern: str
    files_found: int
    quarantine: list[dict[str, Any]]
    candidates: list[tuple[FoundFile, Labelled]]
    reused: dict[str, FileCheck]
    scan_s: float

    @property
    def todo(self) -> list[FoundFile]:
        """Candidates without a reusable check from the previous run."""
        return [item for item, _ in self.candidates if item.path not in self.reused]

    def chunks(self, size: int | None = None) -> list[list[tuple[str, int, int]]]:
        """The `todo` files as (path, size, mtime_ns) lists of at most `size` (default MAP_CHUNK_SIZE)."""
        size = size or MAP_CHUNK_SIZE
        stamps = [(item.path, item.size_bytes, item.mtime_ns) for item in self.todo]
        return [stamps[start : start + size] for start in range(0, len(stamps), size)]


def ingest_folder(
    data_dir: Path,
    out_dir: Path,
    *,
    min_side: int,
    previous_manifest: Path | None = None,
    workers: int | None = None,
    patient_pattern: str = DEFAULT_PATIENT_PATTERN,
) -> IngestResult:
    """Scan, label, check and de-duplicate `data_dir`; write the manifest and quarantine list to `out_dir`."""
    plan = plan_folder(
        data_dir,
        out_dir,
        min_side=min_side,
        previous_manifest=previous_manifest,
        patient_pattern=patient_pattern,
    )
    started = time.perf_counter()
    checks = check_paths([item.path for item in plan.todo], workers)
    return assemble_manifest(plan, checks, check_s=time.perf_counter() - started)


def plan_folder(
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    min_side: int,
    previous_manifest: Path | None = None,
    patient_pattern: str = DEFAULT_PATIENT_PATTERN,
) -> IngestPlan:
    """Scan and label `data_dir`; reuse the previous run's checks of files with unchanged (path, size, mtime)."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found or not a folder: {data_dir}")
    reusable = _previous_checks(previous_manifest)
    found = scan_folder(data_dir.resolve())
    if not found:
        raise DataError(f"no files found in {data_dir}")
    layout = detect_layout(found)

    quarantine: list[dict[str, Any]] = []
    candidates: list[tuple[FoundFile, Labelled]] = []
    reused: dict[str, FileCheck] = {}
    for item, labelled in zip(found, _label_all(found, layout), strict=True):
        if item.problem is not None:
            quarantine.append(_quarantine_row(item, *item.problem))
        elif labelled.label is None:
            quarantine.append(_quarantine_row(item, "unknown_class", UNKNOWN_CLASS_HINTS[layout]))
        else:
            candidates.append((item, labelled))
            previous = reusable.get((item.path, item.size_bytes, item.mtime_ns))
            if previous is not None:
                reused[item.path] = previous
    return IngestPlan(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        min_side=min_side,
        patient_pattern=patient_pattern,
        files_found=len(found),
        quarantine=quarantine,
        candidates=candidates,
        reused=reused,
        scan_s=time.perf_counter() - started,
    )


def check_paths(paths: list[str], workers: int | None = None) -> list[FileCheck]:
    """`check_file` of every path: in this process when few (or `workers == 1`), else in a process pool."""
    workers = workers or os.cpu_count() or 1
    if len(paths) < POOL_MIN_FILES or workers == 1:
        return [check_file(path) for path in paths]
    return _check_in_pool(paths, workers)


def assemble_manifest(plan: IngestPlan, checks: Iterable[FileCheck], *, check_s: float = 0.0) -> IngestResult:
    """Apply the minimum side, remove duplicates and label conflicts, write manifest + quarantine list.

    `checks` covers the plan's `todo` files (in any order); `check_s` is the time they took.
    """
    started = time.perf_counter()
    by_path = {**plan.reused, **{check.path: check for check in checks}}
    missing = [item.path for item in plan.todo if item.path not in by_path]
    if missing:
        raise ValueError(f"{len(missing)} planned files were not checked, e.g. {missing[0]}")
    quarantine = list(plan.quarantine)
    passing: list[tuple[FoundFile, Labelled, FileCheck]] = []
    for item, labelled in plan.candidates:
        check = by_path[item.path]
        if check.reason is None:
            try:
                check_min_side(check.info, plan.min_side)
            except BadImage as error:
                check = FileCheck(check.path, check.sha256, check.info, error.reason, error.detail)
        if check.reason is None:
            passing.append((item, labelled, check))
        else:
            quarantine.append(_quarantine_row(item, check.reason, check.detail, check))

    accepted, rejected = _deduplicate(passing)
    quarantine.extend(rejected)
    manifest = _manifest_frame(accepted, plan.patient_pattern)
    out_dir = Path(plan.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, quarantine_path = out_dir / MANIFEST_NAME, out_dir / QUARANTINE_NAME
    quarantine_frame = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).sort_values("path", kind="stable")
    write_atomically(quarantine_path, lambda tmp: quarantine_frame.to_csv(tmp, index=False))
    if manifest.empty:
        reasons = dict(Counter(row["reason"] for row in quarantine).most_common())
        raise DataError(
            f"no usable images in {plan.data_dir}: all {plan.files_found} files quarantined {reasons} "
            f"(see {quarantine_path})"
        )
    write_atomically(manifest_path, lambda tmp: manifest.to_parquet(tmp, index=False))

    per_source_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), count in manifest.groupby(["source_split", "label"], dropna=False).size().items():
        per_source_split["none" if pd.isna(split) else split][label] = int(count)
    return IngestResult(
        manifest_path=str(manifest_path),
        quarantine_path=str(quarantine_path),
        digest=manifest_digest(manifest),
        files_found=plan.files_found,
        accepted=len(manifest),
        quarantined=len(quarantine),
        quarantined_by_reason=dict(sorted(Counter(row["reason"] for row in quarantine).items())),
        per_class={label: int((manifest["label"] == label).sum()) for label in CLASSES},
        per_source_split=dict(per_source_split),
        duplicates=sum(row["reason"] == "duplicate" for row in quarantine),
        elapsed_s=round(plan.scan_s + check_s + time.perf_counter() - started, 3),
        reused=len(plan.reused),
    )


def _quarantine_row(
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


def _previous_checks(previous_manifest: Path | None) -> dict[tuple[str, int, int], FileCheck]:
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


def _check_in_pool(paths: list[str], workers: int) -> list[FileCheck]:
    """`check_file` over `paths` in worker processes; in this process if no pool can run here.

    The platform's default start method is used (fork on Linux): spawn would re-run an unguarded
    calling script in every worker. Workers only decode and hash, touching no state of the parent.
    """
    size = min(POOL_CHUNK_SIZE, math.ceil(len(paths) / workers))
    chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
    try:
        with ProcessPoolExecutor(workers) as pool:
            return [check for result in pool.map(check_files, chunks) for check in result]
    except (BrokenProcessPool, OSError) as error:  # e.g. no /dev/shm semaphores, or a worker killed
        logger.warning("process pool failed (%s); checking %d files in this process", error, len(paths))
        return [check_file(path) for path in paths]


def _deduplicate(
    passing: list[tuple[FoundFile, Labelled, FileCheck]],
) -> tuple[list[tuple[FoundFile, Labelled, FileCheck]], list[dict[str, Any]]]:
    """Keep the first file (path order) of identical content; all copies go when their labels disagree."""
    by_content: dict[str, list[tuple[FoundFile, Labelled, FileCheck]]] = defaultdict(list)
    for entry in passing:
        by_content[entry[2].sha256].append(entry)
    accepted, rejected = [], []
    for copies in by_content.values():
        if len(copies) == 1:  # the common case, kept cheap: this loop runs over every file
            accepted.append(copies[0])
            continue
        copies.sort(key=lambda entry: entry[0].relative)
        labels = sorted({labelled.label for _, labelled, _ in copies})
        if len(labels) > 1:
            paths = ", ".join(item.relative for item, _, _ in copies)
            detail = f"same content labelled {' and '.join(labels)}: {paths}"
            rejected.extend(
                _quarantine_row(item, "label_conflict", detail, check) for item, _, check in copies
            )
            continue
        kept = copies[0]
        accepted.append(kept)
        detail = f"same content as {kept[0].path}"
        rejected.extend(_quarantine_row(item, "duplicate", detail, check) for item, _, check in copies[1:])
    return accepted, rejected


def _manifest_frame(
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


def data_dir_fingerprint(data_dir: Path | str) -> str:
    """Digest of the folder's listing (relative path, size, mtime_ns of every file), not its bytes."""
    digest = hashlib.sha256()
    for item in scan_folder(Path(data_dir).resolve()) if Path(data_dir).is_dir() else []:
        digest.update(f"{item.relative}\0{item.size_bytes}\0{item.mtime_ns}\0{item.problem}\n".encode())
    return digest.hexdigest()


def data_report_markdown(result: IngestResult) -> str:
    """Human summary of an ingest: counts per class and source split, quarantine, image sizes."""
    manifest = pd.read_parquet(result.manifest_path, columns=["width", "height"])
    lines = [
        "# Data report",
        "",
        f"{result.files_found} files found, **{result.accepted} accepted**, {result.quarantined} quarantined, "
        f"{result.duplicates} duplicates removed, {result.reused} checks reused ({result.elapsed_s:.1f} s).",
        "",
        "| source split | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
    ]
    for split, counts in sorted(result.per_source_split.items()):
        lines.append(f"| {split} | " + " | ".join(str(counts.get(label, 0)) for label in CLASSES) + " |")
    lines.append(
        "| **total** | " + " | ".join(str(result.per_class.get(label, 0)) for label in CLASSES) + " |"
    )
    lines += ["", "| quarantine reason | files |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in result.quarantined_by_reason.items()] or [
        "| none | 0 |"
    ]
    lines += ["", "| image size | min | median | max |", "|---|---|---|---|"]
    for side in ("width", "height"):
        values = manifest[side].tolist()
        lines.append(f"| {side} | {min(values)} | {statistics.median(values):g} | {max(values)} |")
    return "\n".join(lines)


def _latest_index(data_dir: Path) -> Path:
    key = sha256_text(str(data_dir.resolve()))[:16]
    return state_dir("manifests") / f"latest-{key}.txt"


def _fingerprint_inputs(inputs: dict[str, Any]) -> str:
    return data_dir_fingerprint(inputs["data_dir"])


def _retry_unless_user_error(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's hook signature
    """Retry transient I/O failures only: a bad folder stays bad."""
    return not isinstance(state.data, CxrError)


# Every ingest step reads or writes files that may sit on flaky network storage.
_TRANSIENT_IO_RETRIES: dict[str, Any] = {
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": _retry_unless_user_error,
}


@task(
    name="ingest-plan",
    cache_policy=ContentKey(modules=("cxr.imaging",), fingerprint=_fingerprint_inputs),
    **_TRANSIENT_IO_RETRIES,
)
def plan_ingest(data_dir: str, min_side: int) -> IngestPlan:
    """Plan the ingest of `data_dir` into the state folder, reusing the previous run's checks of unchanged files."""
    folder = Path(data_dir)
    # min_side is part of the folder name: a run with another minimum must not overwrite this manifest.
    out_dir = state_dir("manifests", f"{data_dir_fingerprint(folder)[:16]}-s{min_side}")
    index = _latest_index(folder)
    previous = Path(index.read_text().strip()) if index.is_file() else None
    plan = plan_folder(folder, out_dir, min_side=min_side, previous_manifest=previous)
    get_run_logger().info(
        "ingest %s: %d found, %d checks reused, %d files to check in %d chunks",
        data_dir,
        plan.files_found,
        len(plan.reused),
        len(plan.todo),
        len(plan.chunks()),
    )
    return plan


@task(name="ingest-check", cache_policy=ContentKey(modules=("cxr.imaging",)), **_TRANSIENT_IO_RETRIES)
def check_chunk(files: list[tuple[str, int, int]]) -> list[FileCheck]:
    """Decode and hash one chunk of (path, size, mtime_ns) files; the stamps make the cache key."""
    return check_paths([path for path, _, _ in files], workers=1)


@task(name="ingest-assemble", cache_policy=ContentKey(modules=("cxr.imaging",)), **_TRANSIENT_IO_RETRIES)
def assemble_ingest(plan: IngestPlan, checks: list[list[FileCheck]]) -> IngestResult:
    """Write the planned folder's manifest from the chunks' checks; publish the data report.

    Its `elapsed_s` counts scanning and assembling: the checks ran as their own task runs.
    """
    logger = get_run_logger()
    result = assemble_manifest(plan, itertools.chain.from_iterable(checks))
    write_atomically(_latest_index(Path(plan.data_dir)), lambda tmp: tmp.write_text(result.manifest_path))
    logger.info(
        "ingest %s: %d found, %d accepted, %d quarantined %s, %d checks reused",
        plan.data_dir,
        result.files_found,
        result.accepted,
        result.quarantined,
        result.quarantined_by_reason,
        result.reused,
    )
    create_markdown_artifact(
        key="data-report", markdown=data_report_markdown(result), description="Ingest summary"
    )
    quarantine = pd.read_csv(
        result.quarantine_path, usecols=["path", "reason", "detail"], keep_default_na=False
    )
    create_table_artifact(
        key="quarantine",
        table=quarantine.head(QUARANTINE_TABLE_ROWS).to_dict("records"),
        description=f"Quarantined files ({len(quarantine)}; first {QUARANTINE_TABLE_ROWS} shown; full list "
        f"in {result.quarantine_path})",
    )
    return result
