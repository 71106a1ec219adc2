"""The `predict` flow: score image files or folders with a registered (by default the champion) model."""

from __future__ import annotations

import datetime as dt

from prefect import flow

from cxr import REGISTERED_MODEL_NAME
from cxr.core.task_policy import PREDICT_TIMEOUT_S
from tasks.predict import predict_files


def predict_run_name() -> str:
    return f"predict-{dt.datetime.now().strftime('%Y-%m-%d-%H%M%S')}"


@flow(name="predict", flow_run_name=predict_run_name, persist_result=True, timeout_seconds=PREDICT_TIMEOUT_S)
def predict(
    paths: list[str],
    model_uri: str = f"models:/{REGISTERED_MODEL_NAME}@champion",
    out_csv: str = "predictions.csv",
    heatmaps_dir: str | None = None,
    operating_point: str | None = None,
) -> dict:
    """Score `paths` (files or folders) into `out_csv`; Grad-CAM overlays go to `heatmaps_dir` if given.

    `operating_point`: a named operating point of the model (None: its default).
    Returns the summary: scored, failed, out_csv, model_uri, threshold, operating_point, by_label, by_status.
    """
    return predict_files(model_uri, paths, out_csv, heatmaps_dir, operating_point)
