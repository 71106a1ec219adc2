"""Stage `report`: publish what a person wants to see of this run as Prefect artifacts.

It runs on every flow run, cached or not: a nightly run that reused every stage still shows its
metrics, plots and promotion decision on its own dashboard page.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr.core.task_policy import DEFAULT_TIMEOUTS, retry_transient
from cxr.evaluation.evaluate import EvaluationResult, publish_evaluation


def summary_markdown(summary: dict[str, Any]) -> str:
    """A short run summary: model, registry outcome, headline metrics and what was reused."""
    metrics = summary["metrics"]
    headline = " · ".join(
        f"{key} {metrics[key]:.3f}"
        for key in ("accuracy", "sensitivity", "specificity", "auc")
        if metrics.get(key) is not None
    )
    decision = summary.get("decision") or {}
    return "\n".join(
        [
            f"# Retrain: {summary['architecture']} → `{summary['model_uri']}`",
            "",
            f"- champion: **{'yes' if summary['champion'] else 'no'}** ({decision.get('reason', 'n/a')}); "
            f"`champion` is v{summary.get('champion_version') or '-'} now",
            f"- MLflow run `{summary.get('mlflow_run_id')}` ({summary.get('mlflow_run_url') or 'local store'}) "
            f"registered as version {summary['model_version']}",
            f"- test split: {headline} (operating point `{summary.get('operating_point', 'default')}`, "
            f"threshold {summary['threshold']:.4f})",
            f"- data digest `{summary['data_digest'][:16]}`; images accepted {summary['images']['accepted']}, "
            f"quarantined {summary['images']['quarantined']}",
            f"- reused cached stages: {', '.join(summary['cached_tasks']) or 'none'}",
        ]
    )


# NO_CACHE: every run shows its results.
@task(
    name="report",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
    timeout_seconds=DEFAULT_TIMEOUTS.report_s,
)
def report(evaluation: EvaluationResult, summary: dict[str, Any]) -> None:
    """Publish the metrics table, evaluation report, plots and run summary for this flow run."""
    publish_evaluation(evaluation)
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(summary))
