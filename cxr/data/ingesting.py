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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cxr.core.errors import DataError
from cxr.core.progress import stage_progress
from cxr.data.imaging import FileCheck, check_file, check_files
from cxr.data.ingest_assembly import assemble_manifest
from cxr.data.ingest_plans import CANDIDATE_COLUMNS, IngestPlan
from cxr.data.ingest_reuse import PreviousRun, patient_ids, previous_run, reused_checks
from cxr.data.layouts import DEFAULT_PATIENT_PATTERN, UNKNOWN_CLASS_HINTS, Labelled, detect_layout, label_all
from cxr.data.manifests import IngestResult, quarantine_frame, quarantine_row
from cxr.data.scanning import FoundFile, scan_folder

# Below this many files to check, a process pool costs more than it saves.
POOL_MIN_FILES = 200


POOL_CHUNK_SIZE = 64


logger = logging.getLogger(__name__)


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
    refused = [
        index
        for index, (item, labelled) in enumerate(zip(found, labels, strict=True))
        if item.problem is not None or labelled.label is None
    ]
    quarantine = [
        quarantine_row(
            found[index], *(found[index].problem or ("unknown_class", UNKNOWN_CLASS_HINTS[layout]))
        )
        for index in refused
    ]
    if refused:
        kept = sorted(set(range(len(found))).difference(refused))
        found, labels = [found[index] for index in kept], [labels[index] for index in kept]
    candidates, reused = _candidates(found, labels, patient_pattern, previous)
    return IngestPlan(
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        min_side=min_side,
        patient_pattern=patient_pattern,
        files_found=len(refused) + len(found),
        quarantine=quarantine_frame(quarantine),
        candidates=candidates,
        reused=reused,
        scan_s=time.perf_counter() - started,
    )


def _candidates(
    usable: list[FoundFile], labels: list[Labelled], patient_pattern: str, previous: PreviousRun
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable files as a CANDIDATE_COLUMNS table, and the previous checks still valid for them.

    Built from whole columns (a DataFrame made of row tuples costs ten times more); a check is reused
    only for the same path, size and mtime, so a file rewritten in place is checked again.
    """
    paths, relatives, sizes, mtimes, _ = zip(*usable, strict=True) if usable else ((),) * 5
    path_array = pa.array(paths, pa.large_string())
    size_array, mtime_array = np.array(sizes, dtype=np.int64), np.array(mtimes, dtype=np.int64)
    columns = {
        "path": path_array,
        "relative": pa.array(relatives, pa.large_string()),
        "size_bytes": size_array,
        "mtime_ns": mtime_array,
        "label": _text([labelled.label for labelled in labels]),
        "source_split": _text([labelled.source_split for labelled in labels]),
        "patient_id": _text(patient_ids(previous, path_array, relatives, patient_pattern)),
    }
    candidates = pa.table(columns).select(CANDIDATE_COLUMNS).to_pandas()
    return candidates, reused_checks(previous, path_array, size_array, mtime_array)


def _text(values: list[str | None]) -> pa.Array:
    """Text as pandas would infer it from a list (large strings; no type when every value is None)."""
    array = pa.array(values)
    return array if pa.types.is_null(array.type) else array.cast(pa.large_string())


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
