"""The last ingest step: join a plan's files to their checks, refuse, de-duplicate, write the files.

`assemble_manifest` completes an `IngestPlan` (`cxr.data.ingest_plans`) once its `todo` files are checked.
The join is one vectorised lookup by path; the common case (no copies, nothing refused) stays
columnar, so an incremental ingest costs little more per unchanged file than a stat.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cxr import CLASSES
from cxr.core.atomic_files import write_atomically
from cxr.core.errors import DataError
from cxr.data.imaging import BadImage, FileCheck, ImageInfo, check_min_side
from cxr.data.ingest_plans import IngestPlan
from cxr.data.ingest_reuse import last_positions, text_array
from cxr.data.manifests import (
    CHECK_DTYPES,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    IngestResult,
    checks_frame,
    manifest_digest,
    manifest_frame,
    quarantine_frame,
    with_dtypes,
    write_manifest,
)


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
    rows = _apply_min_side(_checked_candidates(plan, checks), plan.min_side)
    refused = rows["reason"].notna()
    passing, failed = (rows[~refused], rows[refused]) if refused.any() else (rows, rows.iloc[:0])

    if keep_duplicates:
        accepted, rejected = passing, passing.iloc[:0]
        duplicates = len(passing) - passing["sha256"].nunique()
    else:
        accepted, rejected = _deduplicate(passing)
        duplicates = int((rejected["reason"] == "duplicate").sum())
    refusals = [quarantine_frame(frame) for frame in (failed, rejected) if len(frame)]
    quarantine = (
        pd.concat([plan.quarantine, *refusals], ignore_index=True) if refusals else plan.quarantine
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


def _checked_candidates(plan: IngestPlan, checks: Iterable[FileCheck] | pd.DataFrame) -> pd.DataFrame:
    """The plan's candidates, each with its check (reused or fresh; where a path has two, the last)."""
    fresh = checks if isinstance(checks, pd.DataFrame) else checks_frame(checks)
    by_path = (
        pd.concat([plan.reused, with_dtypes(fresh, CHECK_DTYPES)], ignore_index=True)
        if len(fresh)
        else plan.reused
    )
    positions = last_positions(text_array(plan.candidates["path"]), text_array(by_path["path"]))
    if (positions < 0).any():
        missing = plan.candidates["path"][positions < 0].tolist()
        raise ValueError(f"{len(missing)} planned files were not checked, e.g. {missing[0]}")
    found = by_path.drop(columns="path").iloc[positions].reset_index(drop=True)
    return pd.concat([plan.candidates.reset_index(drop=True), found], axis=1)


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
