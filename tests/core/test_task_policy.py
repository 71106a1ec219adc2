"""One retry rule and a stated timeout for every stage: transient failures retried, input errors never."""

from __future__ import annotations

import errno
import importlib
import pkgutil

import pytest

import tasks
from cxr.core.errors import DataError, ModelError
from cxr.core.task_policy import DEFAULT_TIMEOUTS, StageTimeout, is_transient, retry_transient


def _stage_tasks() -> dict[str, object]:
    """Every Prefect task defined in the `tasks` package, by task name."""
    from prefect import Task

    found = {}
    for module_info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, Task) and value.fn.__module__ == module.__name__:
                found[value.name] = value
    return found


STAGES = _stage_tasks()


def test_transient_failures_are_told_from_input_errors():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
    from prefect.task_engine import TaskRunTimeoutError

    assert is_transient(OSError(errno.EIO, "input/output error"))
    assert is_transient(ConnectionRefusedError("registry down"))
    assert is_transient(MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST))
    assert is_transient(_tracking_server_down())
    assert not is_transient(DataError("only one class"))
    assert not is_transient(ModelError("unsafe model file"))
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(TaskRunTimeoutError("hung"))
    assert not is_transient(StageTimeout("hung"))


def _tracking_server_down() -> Exception:
    """The error MLflow's REST client raises when its tracking server does not answer."""
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    try:
        http_request(
            MlflowHostCreds("http://127.0.0.1:9"), "/api/2.0/mlflow/experiments/search", "GET", max_retries=0
        )
    except Exception as error:
        return error
    raise AssertionError("a request to a closed port succeeded")


def test_every_stage_states_the_shared_retry_rule_and_a_timeout():
    assert {
        "ingest-check",
        "split",
        "batches-shard",
        "train",
        "evaluate",
        "register",
        "report",
    } <= STAGES.keys()
    for name, stage in STAGES.items():
        assert stage.retry_condition_fn is retry_transient, name
        assert stage.retries >= 1, name
        assert stage.timeout_seconds and stage.timeout_seconds > 0, name
        limit = DEFAULT_TIMEOUTS.for_task(name)  # the config's default for the stage, where it has one
        assert limit is None or stage.timeout_seconds == limit[1], name


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_retries_io_errors_and_never_input_errors(prefect_harness, name):
    """Each stage's own task options, run by Prefect on a body that fails. Checked: with the old per-stage
    options, `split`, `batches`, `train`, `evaluate`, `register` and `report` retried the DataError."""
    calls: list[str] = []

    def failing_once(error: BaseException):
        def body(*args, **kwargs):
            calls.append(name)
            if len(calls) == 1:
                raise error
            return "done"

        return body

    def run(error: BaseException):
        calls.clear()
        stage = STAGES[name].with_options(retry_delay_seconds=0, cache_policy=None, timeout_seconds=30)
        stage.fn = failing_once(error)
        return stage(return_state=True)

    state = run(OSError(errno.EIO, "injected EIO"))
    assert state.is_completed() and len(calls) == 2, name
    state = run(DataError("injected input error"))
    assert state.is_failed() and len(calls) == 1, name
