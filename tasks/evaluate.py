"""Stage `evaluate`: score the trained model on the test split (`cxr.evaluation.evaluate`); `report` publishes it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from cxr.core.caching import ContentKey, current_task_key
from cxr.core.errors import ModelError
from cxr.core.state_folder import state_dir
from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.data.batches import BatchesResult
from cxr.evaluation.evaluate import EvaluationResult, evaluate_model, format_metric

# The modules whose source decides an evaluation (its cache key and its report folder).
DECIDED_BY = (
    __name__,
    "cxr.evaluation.evaluate",
    "cxr.evaluation.metrics",
    "cxr.evaluation.plots",
    "cxr.evaluation.scoring",
    "cxr.evaluation.domain",
    "cxr.data.split_images",
    "cxr.model.referral",
    "cxr.model.operating_points",
    "cxr.model.loading",
)


@task(
    name="evaluate",
    cache_policy=ContentKey(modules=DECIDED_BY),
    persist_result=True,
    retries=1,
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.evaluate_s,
)
def evaluate(model_path: str, model_sha256: str, batches: BatchesResult) -> EvaluationResult:
    """Evaluate the trained model on the test split (the `report` task publishes the results)."""
    out_dir = state_dir("reports", current_task_key()[:16])
    result = evaluate_model(Path(model_path), batches, out_dir=out_dir)
    if result.model_sha256 != model_sha256:
        raise ModelError(f"{model_path} changed since training (sha256 {result.model_sha256[:12]})")
    metrics = result.metrics
    get_run_logger().info(
        "test AUC %s, sensitivity %s, specificity %s on %d images",
        format_metric(metrics["auc"]),
        format_metric(metrics["sensitivity"]),
        format_metric(metrics["specificity"]),
        result.n,
    )
    return result
