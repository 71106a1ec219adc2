"""Stage `review-sync`: queued images to Label Studio, finished labels back into a data folder
(`cxr.review.sync`), for the `review-sync` deployment. Neither is cached: each run acts on the queue as it is."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cxr.core.task_policy import retry_transient
from cxr.review.labelstudio import LabelStudio
from cxr.review.server import connection
from cxr.review.sync import pull, push

# Seconds for one push or pull: 1000 images take a few seconds (docs/review.md); this leaves room for 100x.
SYNC_TIMEOUT_S = 1800


@task(
    name="review-push",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_transient,  # Label Studio down is no transient error: the next run tries again
    timeout_seconds=SYNC_TIMEOUT_S,
)
def push_queue() -> dict[str, int]:
    """Send the queued images to Label Studio as pre-annotated tasks."""
    sent = push(LabelStudio(*connection()))
    get_run_logger().info(
        "sent %d queued image(s) to Label Studio (%d already there)", sent["sent"], sent["adopted"]
    )
    return sent


@task(
    name="review-pull",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_transient,
    timeout_seconds=SYNC_TIMEOUT_S,
)
def pull_labels(data_dir: str) -> dict[str, int]:
    """Bring finished labels back: Pneumonia and Normal images into `data_dir`'s class folders."""
    pulled = pull(LabelStudio(*connection()), Path(data_dir))
    get_run_logger().info(
        "added %d reviewed image(s) to %s; recorded %d; %d task(s) deleted in Label Studio queued again",
        pulled["added"],
        data_dir,
        pulled["recorded"],
        pulled["requeued"],
    )
    return pulled
