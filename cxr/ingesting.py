"""Ingest a folder: scan, label, check every file, de-duplicate, and write the manifest and quarantine list.

Every file found ends up either in the manifest (Parquet) or in the quarantine list (CSV) with a
reason, so `files_found == accepted + quarantined` always holds. Checking (full decode + SHA-256) is
skipped for files whose (path, size, mtime) match the previous run.

Three pure steps: `plan_folder` (scan, label, reuse) -> `check_paths` -> `assemble_manifest` (minimum
side, duplicates, files written). `ingest_folder` runs them in one call, checking in worker processes;
the `ingest` stage runs them as tasks, mapping the checks over `IngestPlan.chunks()`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr import CLASSES
from cxr.errors import DataError
from cxr.files import write_atomically
from cxr.imaging import BadImage, FileCheck, check_file, check_files, check_min_side
from cxr.layouts import DEFAULT_PATIENT_PATTERN, UNKNOWN_CLASS_HINTS, Labelled, detect_layout, label_all
from cxr.manifests import (
    MANIFEST_NAME,
    QUARANTINE_COLUMNS,
    QUARANTINE_NAME,
    IngestResult,
    manifest_digest,
    manifest_frame,
    previous_checks,
    quarantine_row,
)
from cxr.progress import stage_progress
from cxr.scanning import FoundFile, scan_folder

# Below this many files to check, a process pool costs more than it saves.
POOL_MIN_FILES = 200


POOL_CHUNK_SIZE = 64


# Files per mapped `check_chunk` task: big enough that task overhead stays small next to decoding.
MAP_CHUNK_SIZE = 256


logger = logging.getLogger(__name__)


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
    keep_duplicates: bool = False,
) -> IngestResult:
    """Scan, label, check and de-duplicate `data_dir`; write the manifest and quarantine list to `out_dir`.

    `keep_duplicates`: every copy stays in the manifest, each with its own label (scoring a labelled
    folder counts every file); `duplicates` then counts the copies instead of the removed ones.
    """
    plan = plan_folder(
        data_dir,
        out_dir,
        min_side=min_side,
        previous_manifest=previous_manifest,
        patient_pattern=patient_pattern,
    )
    started = time.perf_counter()
    with stage_progress("ingest: check files", len(plan.todo), "files") as progress:
        checks = check_paths([item.path for item in plan.todo], workers, on_checked=progress.advance)
    return assemble_manifest(
        plan, checks, check_s=time.perf_counter() - started, keep_duplicates=keep_duplicates
    )


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
    reusable = previous_checks(previous_manifest)
    found = scan_folder(data_dir.resolve())
    if not found:
        raise DataError(f"no files found in {data_dir}")
    layout = detect_layout(found)

    quarantine: list[dict[str, Any]] = []
    candidates: list[tuple[FoundFile, Labelled]] = []
    reused: dict[str, FileCheck] = {}
    for item, labelled in zip(found, label_all(found, layout), strict=True):
        if item.problem is not None:
            quarantine.append(quarantine_row(item, *item.problem))
        elif labelled.label is None:
            quarantine.append(quarantine_row(item, "unknown_class", UNKNOWN_CLASS_HINTS[layout]))
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


def check_paths(
    paths: list[str], workers: int | None = None, on_checked: Callable[[int], object] | None = None
) -> list[FileCheck]:
    """`check_file` of every path: in this process when few (or `workers == 1`), else in a process pool.

    `on_checked(count)` is called as files are done (progress).
    """
    workers = workers or os.cpu_count() or 1
    report = on_checked or (lambda count: None)
    if len(paths) < POOL_MIN_FILES or workers == 1:
        checks = []
        for path in paths:
            checks.append(check_file(path))
            report(1)
        return checks
    return _check_in_pool(paths, workers, report)


def assemble_manifest(
    plan: IngestPlan, checks: Iterable[FileCheck], *, check_s: float = 0.0, keep_duplicates: bool = False
) -> IngestResult:
    """Apply the minimum side, remove duplicates and label conflicts (unless `keep_duplicates`), write
    manifest + quarantine list.

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
            quarantine.append(quarantine_row(item, check.reason, check.detail, check))

    if keep_duplicates:
        accepted, rejected = passing, []
        duplicates = len(passing) - len({check.sha256 for _, _, check in passing})
    else:
        accepted, rejected = _deduplicate(passing)
        duplicates = sum(row["reason"] == "duplicate" for row in rejected)
    quarantine.extend(rejected)
    manifest = manifest_frame(accepted, plan.patient_pattern)
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
        duplicates=duplicates,
        elapsed_s=round(plan.scan_s + check_s + time.perf_counter() - started, 3),
        reused=len(plan.reused),
    )


def _check_in_pool(paths: list[str], workers: int, report: Callable[[int], object]) -> list[FileCheck]:
    """`check_file` over `paths` in worker processes; in this process if no pool can run here.

    The platform's default start method is used (fork on Linux): spawn would re-run an unguarded
    calling script in every worker. Workers only decode and hash, touching no state of the parent.
    """
    size = min(POOL_CHUNK_SIZE, math.ceil(len(paths) / workers))
    chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
    try:
        checks: list[FileCheck] = []
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(check_files, chunks):  # in order, as they finish
                checks.extend(result)
                report(len(result))
        return checks
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
                quarantine_row(item, "label_conflict", detail, check) for item, _, check in copies
            )
            continue
        kept = copies[0]
        accepted.append(kept)
        detail = f"same content as {kept[0].path}"
        rejected.extend(quarantine_row(item, "duplicate", detail, check) for item, _, check in copies[1:])
    return accepted, rejected
