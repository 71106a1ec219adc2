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
from collections import defaultdict
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
from cxr.imaging import BadImage, FileCheck, ImageInfo, check_file, check_files, check_min_side
from cxr.layouts import DEFAULT_PATIENT_PATTERN, UNKNOWN_CLASS_HINTS, Labelled, detect_layout, label_all
from cxr.manifests import (
    CHECK_COLUMNS,
    CHECK_DTYPES,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    STAMP_COLUMNS,
    IngestResult,
    checks_frame,
    manifest_digest,
    manifest_frame,
    patient_ids,
    previous_run,
    quarantine_frame,
    quarantine_row,
    write_manifest,
)
from cxr.progress import stage_progress
from cxr.scanning import FoundFile, scan_folder

# Below this many files to check, a process pool costs more than it saves.
POOL_MIN_FILES = 200


POOL_CHUNK_SIZE = 64


# Files per mapped `check_chunk` task: big enough that task overhead stays small next to decoding.
MAP_CHUNK_SIZE = 256


logger = logging.getLogger(__name__)


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
        reused = set(self.reused["path"].tolist())  # a set: `Series.isin` on text is 30x slower here
        fresh = [path not in reused for path in self.candidates["path"].tolist()]
        return self.candidates.loc[fresh, STAMP_COLUMNS].reset_index(drop=True)

    def chunks(self, size: int | None = None) -> list[list[tuple[str, int, int]]]:
        """The `todo` files as (path, size, mtime_ns) lists of at most `size` (default MAP_CHUNK_SIZE)."""
        size = size or MAP_CHUNK_SIZE
        stamps = list(self.todo.itertuples(index=False, name=None))
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
    todo = plan.todo["path"].tolist()
    with stage_progress("ingest: check files", len(todo), "files") as progress:
        checks = check_paths(todo, workers, on_checked=progress.advance)
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
    previous = previous_run(previous_manifest, patient_pattern)
    found = scan_folder(data_dir.resolve())
    if not found:
        raise DataError(f"no files found in {data_dir}")
    layout = detect_layout(found)
    labels = label_all(found, layout)

    quarantine: list[dict[str, Any]] = []
    usable: list[tuple[FoundFile, Labelled]] = []
    for item, labelled in zip(found, labels, strict=True):
        if item.problem is not None:
            quarantine.append(quarantine_row(item, *item.problem))
        elif labelled.label is None:
            quarantine.append(quarantine_row(item, "unknown_class", UNKNOWN_CLASS_HINTS[layout]))
        else:
            usable.append((item, labelled))
    candidates = _candidate_frame(usable, patient_pattern, previous.patient_ids)
    # A check is reused only for the same path, size and mtime: a file rewritten in place is checked again.
    reused = _take_matching(previous.checks, _stamps(previous.checks), _stamps(candidates))
    return IngestPlan(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        min_side=min_side,
        patient_pattern=patient_pattern,
        files_found=len(found),
        quarantine=quarantine_frame(quarantine),
        candidates=candidates,
        reused=reused[CHECK_COLUMNS].astype(CHECK_DTYPES),
        scan_s=time.perf_counter() - started,
    )


def _candidate_frame(
    usable: list[tuple[FoundFile, Labelled]], patient_pattern: str, known_patients: dict[str, str | None]
) -> pd.DataFrame:
    # Built from whole columns: a DataFrame made of row tuples costs ten times more.
    items = [item for item, _ in usable]
    paths, relatives = [item.path for item in items], [item.relative for item in items]
    columns = {
        "path": paths,
        "relative": relatives,
        "size_bytes": [item.size_bytes for item in items],
        "mtime_ns": [item.mtime_ns for item in items],
        "label": [labelled.label for _, labelled in usable],
        "source_split": [labelled.source_split for _, labelled in usable],
        "patient_id": patient_ids(paths, relatives, patient_pattern, known_patients),
    }
    return pd.DataFrame(columns, columns=CANDIDATE_COLUMNS).astype(CANDIDATE_DTYPES)


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
    plan: IngestPlan,
    checks: Iterable[FileCheck] | pd.DataFrame,
    *,
    check_s: float = 0.0,
    keep_duplicates: bool = False,
) -> IngestResult:
    """Apply the minimum side, remove duplicates and label conflicts (unless `keep_duplicates`), write
    manifest + quarantine list.

    `checks` covers the plan's `todo` files (in any order; FileChecks or a CHECK_COLUMNS table);
    `check_s` is the time they took.
    """
    started = time.perf_counter()
    fresh = checks if isinstance(checks, pd.DataFrame) else checks_frame(checks)
    by_path = pd.concat([plan.reused, fresh.astype(CHECK_DTYPES)], ignore_index=True)
    paths = plan.candidates["path"].tolist()
    found = _take_matching(by_path, by_path["path"].tolist(), paths)
    if len(found) < len(paths):
        missing = sorted(set(paths) - set(found["path"].tolist()))
        raise ValueError(f"{len(missing)} planned files were not checked, e.g. {missing[0]}")
    rows = pd.concat([plan.candidates.reset_index(drop=True), found.drop(columns="path")], axis=1)
    rows = _apply_min_side(rows, plan.min_side)
    refused = rows["reason"].notna()
    passing, failed = rows[~refused], rows[refused]

    if keep_duplicates:
        accepted, rejected = passing, passing.iloc[:0]
        duplicates = len(passing) - passing["sha256"].nunique()
    else:
        accepted, rejected = _deduplicate(passing)
        duplicates = int((rejected["reason"] == "duplicate").sum())
    quarantine = pd.concat(
        [plan.quarantine, quarantine_frame(failed), quarantine_frame(rejected)], ignore_index=True
    ).sort_values("path", kind="stable")
    manifest = manifest_frame(accepted)
    out_dir = Path(plan.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, quarantine_path = out_dir / MANIFEST_NAME, out_dir / QUARANTINE_NAME
    write_atomically(quarantine_path, lambda tmp: quarantine.to_csv(tmp, index=False))
    reasons = quarantine["reason"].value_counts()
    if manifest.empty:
        raise DataError(
            f"no usable images in {plan.data_dir}: all {plan.files_found} files quarantined "
            f"{ {reason: int(count) for reason, count in reasons.items()} } (see {quarantine_path})"
        )
    write_atomically(manifest_path, lambda tmp: write_manifest(manifest, tmp, plan.patient_pattern))

    per_source_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), count in manifest.groupby(["source_split", "label"], dropna=False).size().items():
        per_source_split["none" if pd.isna(split) else split][label] = int(count)
    per_class = manifest["label"].value_counts()
    return IngestResult(
        manifest_path=str(manifest_path),
        quarantine_path=str(quarantine_path),
        digest=manifest_digest(manifest),
        files_found=plan.files_found,
        accepted=len(manifest),
        quarantined=len(quarantine),
        quarantined_by_reason={reason: int(reasons[reason]) for reason in sorted(reasons.index)},
        per_class={label: int(per_class.get(label, 0)) for label in CLASSES},
        per_source_split=dict(per_source_split),
        duplicates=int(duplicates),
        elapsed_s=round(plan.scan_s + check_s + time.perf_counter() - started, 3),
        reused=len(plan.reused),
    )


def _stamps(frame: pd.DataFrame) -> list[tuple[str, int, int]]:
    return list(zip(*(frame[name].tolist() for name in STAMP_COLUMNS), strict=True))


def _take_matching(table: pd.DataFrame, keys: list, wanted: list) -> pd.DataFrame:
    """The rows of `table` whose key (`keys`, one per row; the last row wins) is in `wanted`, in
    `wanted`'s order. A dict lookup per row: a pandas merge on text costs several times more."""
    position = dict(zip(keys, range(len(keys)), strict=True))
    taken = [position[key] for key in wanted if key in position]
    return table.iloc[taken].reset_index(drop=True)


def _apply_min_side(rows: pd.DataFrame, min_side: int) -> pd.DataFrame:
    """`rows` with checked images below `min_side` refused as `too_small` (digest and header facts kept)."""
    small = (rows["reason"].isna() & (rows[["width", "height"]].min(axis=1) < min_side)).fillna(False)
    if not small.any():
        return rows
    rows = rows.copy()
    for index, width, height in rows.loc[small, ["width", "height"]].itertuples(name=None):
        try:
            check_min_side(ImageInfo(int(width), int(height), "", ""), min_side)
        except BadImage as error:
            rows.loc[index, ["reason", "detail"]] = error.reason, error.detail
    return rows


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


def _deduplicate(passing: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first file (path order) of identical content; all copies go when their labels disagree.

    Returns (accepted, rejected); rejected rows carry their quarantine `reason` and `detail`.
    """
    copies = passing["sha256"].duplicated(keep=False)
    if not copies.any():  # the common case, kept columnar: no Python work per file
        return passing, passing.iloc[:0]
    shared = passing[copies].sort_values("relative", kind="stable", ignore_index=True)
    by_content: dict[str, list[int]] = defaultdict(list)
    for position, sha256 in enumerate(shared["sha256"].tolist()):
        by_content[sha256].append(position)
    labels, relatives, paths = (shared[name].tolist() for name in ("label", "relative", "path"))
    kept, rejected, reasons, details = [], [], [], []
    for positions in by_content.values():
        names = sorted({labels[position] for position in positions})
        if len(names) > 1:
            listed = ", ".join(relatives[position] for position in positions)
            detail = f"same content labelled {' and '.join(names)}: {listed}"
            rejected += positions
            reasons += ["label_conflict"] * len(positions)
            details += [detail] * len(positions)
            continue
        kept.append(positions[0])
        rejected += positions[1:]
        reasons += ["duplicate"] * (len(positions) - 1)
        details += [f"same content as {paths[positions[0]]}"] * (len(positions) - 1)
    refused = shared.iloc[rejected].assign(reason=reasons, detail=details)
    return pd.concat([passing[~copies], shared.iloc[kept]], ignore_index=True), refused
