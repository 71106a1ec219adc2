"""What every stage's task states on purpose: which failures earn a retry, and how long it may run.

One retry rule for all stages (`retry_transient`): failures of the outside world (file I/O, network,
the model registry being busy or unreachable) are retried; input and configuration errors (`CxrError`:
`DataError`, `ModelError`), programming errors and timeouts never are. A hung call is likely to hang
again, so a timed-out stage fails the run at once and the next queued run can start.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cxr.core.errors import CxrError


class TimeoutParams(BaseModel):
    """Seconds each task of a stage, and the whole run, may take before it fails as hung (nothing retries it).

    Sized from a measured run (`default` model on the 5216 Kaggle images, 2 busy CPU cores, 2026-12-01):
    ingest tasks <= 1.5 s, split 0.2 s, batches 16 s, train 804 s, evaluate 4 s, register 12 s, report
    0.2 s, the run 844 s. Each limit leaves room for ~10x the data or a slower machine; raise them beyond.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingest_s: float = Field(
        1800, gt=0, description="Each ingest task: folder scan, a group of chunks' checks, assembly"
    )
    split_s: float = Field(600, gt=0)
    batches_s: float = Field(
        1800, gt=0, description="Each batches task: plan, a group of shards' decoding, assembly"
    )
    train_s: float = Field(4 * 3600, gt=0)
    evaluate_s: float = Field(1800, gt=0)
    domain_s: float = Field(1800, gt=0, description="Fitting the domain score; scoring a run's new images")
    register_s: float = Field(
        1800, gt=0, description="Includes waiting up to 10 min for another run's registry lock"
    )
    report_s: float = Field(300, gt=0)
    flow_s: float = Field(
        6 * 3600, gt=0, description="The whole run: every stage's limit is cut to the time left"
    )

    def for_task(self, task_name: str) -> tuple[str, float] | None:
        """(setting, seconds) of the stage a task belongs to (`ingest-check` -> `ingest_s`), None for others."""
        setting = f"{task_name.split('-')[0]}_s"
        return (setting, getattr(self, setting)) if setting in type(self).model_fields else None


# The limits each task's decorator states; a retrain run applies its config's `timeouts` instead.
DEFAULT_TIMEOUTS = TimeoutParams()
# `cxr predict` has no config: one hour bounds a hung read or model load, not a long list of files.
PREDICT_TIMEOUT_S = 3600.0

# MLflow error codes of a registry that is busy, unreachable or overloaded (sqlite "database is locked"
# arrives as TEMPORARILY_UNAVAILABLE); every other code (bad request, not found, ...) is an answer.
TRANSIENT_MLFLOW_CODES = frozenset(
    {
        "TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNDER_MAINTENANCE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
        "IO_ERROR",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "REQUEST_LIMIT_EXCEEDED",
        "ABORTED",
        "COULD_NOT_ACQUIRE_LOCK",
    }
)


class StageTimeout(TimeoutError):
    """A stage, or the whole run, went past its configured time limit."""


def is_transient(error: BaseException) -> bool:
    """True for a failure a later attempt can cure: I/O, network or registry availability."""
    if isinstance(error, CxrError | StageTimeout) or _is_prefect_timeout(error):
        return False
    if isinstance(error, OSError):  # file I/O, ConnectionError, requests' network errors, LockTimeout
        return True
    # Checked only when loaded: importing MLflow or SQLAlchemy here would slow every task.
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(error, mlflow_exceptions.MlflowException):
        # A tracking server that is down or times out: MLflow wraps the network error without a code.
        return error.error_code in TRANSIENT_MLFLOW_CODES or isinstance(error.__context__, OSError)
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(error, sqlalchemy_exc.OperationalError)


def _is_prefect_timeout(error: BaseException) -> bool:
    from prefect.task_engine import TaskRunTimeoutError

    return isinstance(error, TaskRunTimeoutError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn` of every stage: retry only transient failures (`is_transient`)."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


class _WorkerThreadTimeoutNote(logging.Filter):
    """Drops Prefect's warning, repeated for every mapped task of every run, that a timeout in a worker
    thread cannot interrupt a call blocked outside Python; docs/operating.md's failure section states it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            "Timeout of %s seconds configured for this task, but the task is running in a worker thread"
        )


logging.getLogger("prefect.task_runs").addFilter(_WorkerThreadTimeoutNote())
