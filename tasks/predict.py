"""Stage `predict-files`: score image files or folders with a trained model into a CSV (`cxr.evaluation.predicting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cxr.core.task_policy import PREDICT_TIMEOUT_S, retry_transient
from cxr.evaluation.predicting import json_rows, predict_to_csv
from cxr.review.referred import queue_referred

PREVIEW_ROWS = 50


def _publish(frame: pd.DataFrame, counts: dict[str, Any], out_csv: Path) -> None:
    create_table_artifact(
        key="predictions",
        table=json_rows(frame.head(PREVIEW_ROWS)),
        description=f"Predictions ({len(frame)} files; first {PREVIEW_ROWS} shown; all in {out_csv})",
    )
    # `decision` first: what a reader of that one column receives (cxr.model.referral).
    outcomes = [{"outcome": f"decision {name}", "files": n} for name, n in counts["by_decision"].items()]
    outcomes += [{"outcome": f"predicted {label}", "files": n} for label, n in counts["by_label"].items()]
    outcomes += [{"outcome": f"failed: {status}", "files": n} for status, n in counts["by_status"].items()]
    if counts["out_of_domain"] is not None:
        outcomes.append({"outcome": "scored but out of domain", "files": counts["out_of_domain"]})
    create_table_artifact(
        key="prediction-counts",
        table=outcomes,
        description="Files per decision, per predicted label and per failure",
    )


# NO_CACHE on purpose: the point of a prediction run is to score the files as they are now, and the
# same paths can hold new images (or a moved champion alias can name another model) on the next run.
@task(
    name="predict-files",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    timeout_seconds=PREDICT_TIMEOUT_S,
)
def predict_files(
    model_uri: str,
    paths: list[str],
    out_csv: str,
    heatmaps_dir: str | None = None,
    operating_point: str | None = None,
) -> dict[str, Any]:
    """Score `paths` with the model at `model_uri` into `out_csv` and return a summary; see `predict_to_csv`.
    Images the model refers or finds out of domain join the review queue (`queued_for_review`: new ones)."""
    frame, summary = predict_to_csv(model_uri, paths, out_csv, heatmaps_dir, operating_point)
    summary["queued_for_review"] = queue_referred(frame, model_uri)
    _publish(frame, summary, Path(summary["out_csv"]))
    get_run_logger().info(
        "scored %d of %d files with %s (operating point %s, threshold %.4f): decisions %s; failed %s -> %s; "
        "%d new image(s) queued for review",
        summary["scored"],
        len(frame),
        model_uri,
        summary["operating_point"],
        summary["threshold"],
        summary["by_decision"],
        summary["by_status"] or "none",
        summary["out_csv"],
        summary["queued_for_review"],
    )
    return summary
