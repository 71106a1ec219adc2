"""Stage `split`: assign every manifest row to train, valid or test (rules in `cxr.data.splitting`).

Lineage: the task keeps `splits/latest-<params digest>.txt` (params: `SplitParams` but the minimum
per class) pointing at the last split written with those params and uses it as the
previous split; its content digest is part of the task's cache key. Reviewed images (provenance records
in the data folder, `cxr.data.provenance`) go to train or valid; the records' contents are part of the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from cxr import CLASSES
from cxr.config.params import SplitParams
from cxr.core.artifacts import Artifact
from cxr.core.atomic_files import sha256_file, write_atomically
from cxr.core.caching import ContentKey, current_task_key, sha256_text, stable_json
from cxr.core.state_folder import state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.provenance import read_records, records_digest, reviewed_summary
from cxr.data.splitting import SPLITS, SplitResult, split_manifest


def latest_split_index(params: SplitParams) -> Path:
    """The file that names the last split written with these parameters (whatever the manifest)."""
    decisive = params.model_dump(exclude={"min_images_per_class"})  # a minimum only refuses, never moves
    return state_dir("splits") / f"latest-{sha256_text(stable_json(decisive))[:16]}.txt"


class LineageEntry(BaseModel):
    """What the lineage index remembers of the last split: its file, manifest and own lineage base."""

    split_path: Path
    manifest_digest: str
    base: str


def latest_split(index: Path) -> LineageEntry | None:
    """The last split the index names, or None when there is no index or the file is gone."""
    try:
        entry = LineageEntry.model_validate_json(index.read_text())
    except (OSError, ValueError):
        return None
    return entry if entry.split_path.is_file() else None


def lineage_base(entry: LineageEntry | None, manifest_digest: str) -> str:
    """What, besides the manifest, decides the split: 'none' or the digest of the split it starts from.

    Re-splitting the manifest the last split was made from reproduces that split exactly (every group
    keeps its place), so it shares that split's base, and an identical rerun hits the cache.
    """
    if entry is None:
        return "none"
    if entry.manifest_digest == manifest_digest:
        return entry.base
    return sha256_file(entry.split_path)


def split_fingerprint(inputs: dict[str, Any]) -> str:
    """Cache fingerprint: the lineage base the task would start from and the reviewed images' records."""
    base = lineage_base(latest_split(latest_split_index(inputs["params"])), inputs["manifest_digest"])
    data_dir = inputs.get("data_dir")
    return base if data_dir is None else sha256_text(base + records_digest(read_records(data_dir)))


def _summary_table(result: SplitResult) -> list[dict[str, object]]:
    rows = []
    for name in SPLITS:
        total = sum(result.counts[name].values())
        rows.append(
            {
                "split": name,
                "images": total,
                "patients": result.patients[name],
                **{label: result.counts[name][label] for label in CLASSES},
                "normal_share": round(result.counts[name][CLASSES[1]] / total, 4) if total else None,
            }
        )
    return rows


@task(
    name="split",
    cache_policy=ContentKey(fingerprint=split_fingerprint),
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.split_s,
)
def split(
    manifest_path: str, manifest_digest: str, params: SplitParams, data_dir: str | None = None
) -> SplitResult:
    """Split the manifest with the given digest, keeping the splits of the lineage's previous split;
    the reviewed images of `data_dir` go to train or valid."""
    records = read_records(data_dir) if data_dir else {}
    index = latest_split_index(params)
    entry = latest_split(index)
    base = lineage_base(entry, manifest_digest)
    previous = None if entry is None else entry.split_path
    result = split_manifest(
        Path(manifest_path),
        state_dir("splits", current_task_key()[:16]),
        previous_split=previous,
        reviewed=frozenset(records),
        **params.model_dump(),
    )
    result = result.model_copy(
        update={
            "reviewed": reviewed_summary(
                pd.read_parquet(result.split_path, columns=["sha256", "split"]), records
            )
        }
    )
    write_atomically(
        index,
        lambda partial: partial.write_text(
            LineageEntry(
                split_path=result.split_path, manifest_digest=manifest_digest, base=base
            ).model_dump_json()
        ),
    )
    get_run_logger().info(
        "split %s: %s images, %s patients (previous split: %s); reviewed images: %s",
        result.digest[:12],
        result.counts,
        result.patients,
        previous or "none",
        result.reviewed,
    )
    summary = Artifact(
        key="split-summary",
        table=_summary_table(result),
        description=f"Images and patients per split (split digest {result.digest[:12]})",
    )
    return result.model_copy(update={"artifacts": [summary]})
