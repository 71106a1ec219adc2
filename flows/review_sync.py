"""The `review-sync` flow: push the review queue to Label Studio, pull finished labels into a data folder.

Pulled images land in the data folder's class folders; when that folder is the inbox `cxr watch` watches,
they start the `on-new-data` retrain like any other new files.
"""

from __future__ import annotations

from prefect import flow

from tasks.review_sync import pull_labels, push_queue


@flow(name="review-sync", persist_result=True)
def review_sync(data_dir: str) -> dict:
    """Push new queue items, then pull finished labels into `data_dir`; both counts."""
    return {"push": push_queue(), "pull": pull_labels(data_dir)}
