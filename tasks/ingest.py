"""Stage `ingest`: scan an image folder, label and check every file, and write the manifest.

The work is `cxr.data.ingesting`'s; here it runs as three tasks: `plan_ingest` -> `check_chunks` mapped
over groups of the plan's chunks (on the flow's task runner: threads, or a Dask cluster) -> `assemble_ingest`.
They pass Parquet file lists by path and digest (`cxr.data.ingest_plans`), never the lists themselves.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.logging import get_run_logger

from cxr import CLASSES
from cxr.config.params import IngestParams
from cxr.core import faults
from cxr.core.artifacts import Artifact
from cxr.core.atomic_files import write_atomically
from cxr.core.caching import ContentKey, current_task_key
from cxr.core.state_folder import cxr_home, state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.filelists import FileList
from cxr.data.ingest_plans import StoredPlan, read_checks, store_plan, write_checks
from cxr.data.ingesting import assemble_manifest, check_paths, plan_folder
from cxr.data.manifests import IngestResult, latest_manifest_index, write_new_files
from cxr.data.scanning import data_dir_fingerprint

QUARANTINE_TABLE_ROWS = 500


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
    return latest_manifest_index(state_dir("manifests"), data_dir)


def _fingerprint_inputs(inputs: dict[str, Any]) -> str:
    return data_dir_fingerprint(inputs["data_dir"])


# Every ingest step reads or writes files that may sit on flaky network storage.
_TRANSIENT_IO_RETRIES: dict[str, Any] = {
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": retry_transient,
    "timeout_seconds": DEFAULT_TIMEOUTS.ingest_s,
}


@task(
    name="ingest-plan",
    cache_policy=ContentKey(fingerprint=_fingerprint_inputs),
    **_TRANSIENT_IO_RETRIES,
)
def plan_ingest(data_dir: str, params: IngestParams) -> StoredPlan:
    """Plan the ingest of `data_dir` into the state folder, reusing the previous run's checks of unchanged files."""
    folder = Path(data_dir)
    # Named by the cache key (folder listing, minimum side, code): another minimum gets its own manifest.
    out_dir = state_dir("manifests", current_task_key()[:16])
    index = _latest_index(folder)
    previous = Path(index.read_text().strip()) if index.is_file() else None
    plan = plan_folder(folder, out_dir, min_side=params.min_image_side, previous_manifest=previous)
    stored = store_plan(plan, out_dir / "plan")
    get_run_logger().info(
        "ingest %s: %d found, %d checks reused, %d files to check in %d chunks",
        data_dir,
        plan.files_found,
        len(plan.reused),
        stored.todo,
        stored.chunk_lists.rows,
    )
    return stored


@task(name="ingest-check", cache_policy=ContentKey(), **_TRANSIENT_IO_RETRIES)
def check_chunks(chunks: list[FileList]) -> list[FileList]:
    """Decode and hash each chunk's files, one chunk after another; the lists' digests (paths, sizes, mtimes)
    make the cache key. One check table per chunk, named by its list's digest."""
    faults.kill_once(
        "ingest_check", cxr_home() / "faults"
    )  # a Dask worker lost mid-ingest (tests/pipeline/test_cluster.py)
    return [
        write_checks(
            check_paths(files.read(columns=["path"])["path"].tolist(), workers=1),
            state_dir("ingest-checks") / f"{files.sha256[:16]}.parquet",
        )
        for files in chunks
    ]


@task(name="ingest-assemble", cache_policy=ContentKey(), **_TRANSIENT_IO_RETRIES)
def assemble_ingest(plan: StoredPlan, checks: list[FileList]) -> IngestResult:
    """Write the planned folder's manifest from the chunks' checks, with the data report to publish.

    Its `elapsed_s` counts scanning and assembling: the checks ran as their own task runs.
    """
    checked = read_checks(checks)
    result = assemble_manifest(plan.load(), checked)
    # A folder's first ingest (nothing reused) has no earlier data to drift from: no new files.
    new_files = write_new_files(Path(result.manifest_path), set(checked["path"])) if plan.reused else None
    write_atomically(_latest_index(Path(plan.data_dir)), lambda tmp: tmp.write_text(result.manifest_path))
    get_run_logger().info(
        "ingest %s: %d found, %d accepted, %d quarantined %s, %d checks reused",
        plan.data_dir,
        result.files_found,
        result.accepted,
        result.quarantined,
        result.quarantined_by_reason,
        result.reused,
    )
    return result.model_copy(update={"artifacts": _artifacts(result), "new_files": new_files})


def _artifacts(result: IngestResult) -> list[Artifact]:
    quarantine = pd.read_csv(
        result.quarantine_path, usecols=["path", "reason", "detail"], keep_default_na=False
    )
    return [
        Artifact(key="data-report", markdown=data_report_markdown(result), description="Ingest summary"),
        Artifact(
            key="quarantine",
            table=quarantine.head(QUARANTINE_TABLE_ROWS).to_dict("records"),
            description=f"Quarantined files ({len(quarantine)}; first {QUARANTINE_TABLE_ROWS} shown; full "
            f"list in {result.quarantine_path})",
        ),
    ]
