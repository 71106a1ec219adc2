"""Stage `batches`: decode each split once into uint8 arrays that training reads from memory (`cxr.datasets`)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from cxr.caching import ContentKey
from cxr.datasets import BatchesResult, materialise_batches
from cxr.errors import DataError
from cxr.state import state_dir


@task(
    name="batches",
    cache_policy=ContentKey(modules=("cxr.imaging",)),
    persist_result=True,
    retries=2,
    retry_delay_seconds=[5, 30],
)
def batches(split_path: str, split_digest: str, image_size: int) -> BatchesResult:
    """Materialise the split with the given digest at `image_size` under the state folder."""
    result = materialise_batches(Path(split_path), state_dir("batches"), image_size=image_size)
    if result.digest != split_digest:
        raise DataError(
            f"{split_path} changed since it was split (digest {result.digest[:12]}, expected {split_digest[:12]})"
        )
    get_run_logger().info(
        "batches in %s: %s", result.root, {name: entry.n for name, entry in result.splits.items()}
    )
    return result
