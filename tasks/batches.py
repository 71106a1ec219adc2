"""Stage `batches`: decode the split into shards that training and evaluation stream (`cxr.data.batches`).

Three tasks, as ingest: `batches-plan` lists each shard's files (Parquet), `batches-shard` decodes
shards one after another (mapped over groups of the plan's chunks on the flow's task runner: threads, or a
Dask cluster), `batches-assemble` indexes them. Each result is a path plus digests, whatever the number of
images.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from cxr.core.caching import ContentKey
from cxr.core.errors import DataError
from cxr.core.state_folder import state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.batches import (
    BatchesResult,
    ShardChunk,
    ShardPlan,
    assemble_shards,
    build_shard,
    plan_shards,
)
from cxr.data.shards import ShardRef

# Local files only: a retry helps against a busy disk or network share, not against bad input.
_RETRIES = {
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_condition_fn": retry_transient,
    "timeout_seconds": DEFAULT_TIMEOUTS.batches_s,
}


@task(name="batches-plan", cache_policy=ContentKey(), **_RETRIES)
def plan_batches(split_path: str, split_digest: str, image_size: int) -> ShardPlan:
    """List each shard's files for the split with the given digest, under the state folder."""
    plan = plan_shards(Path(split_path), state_dir("batches"), image_size=image_size)
    if plan.digest != split_digest:
        raise DataError(
            f"{split_path} changed since it was split (digest {plan.digest[:12]}, expected {split_digest[:12]})"
        )
    get_run_logger().info("batches in %s: %s images", plan.root, plan.counts)
    return plan


# A shard is ~1000 images: minutes even on a slow share; a hung read fails the stage.
@task(name="batches-shard", cache_policy=ContentKey(), **_RETRIES)
def build_batch_shards(chunks: list[ShardChunk]) -> list[ShardRef]:
    """Decode each chunk's files into its shard, one shard after another (an intact one already there is kept)."""
    return [build_shard(chunk) for chunk in chunks]


@task(name="batches-assemble", cache_policy=ContentKey(), **_RETRIES)
def assemble_batches(plan: ShardPlan, shards: list[ShardRef]) -> BatchesResult:
    """Index the built shards of every split."""
    result = assemble_shards(plan, shards)
    get_run_logger().info("%d shards indexed in %s", len(shards), result.index.path)
    return result
