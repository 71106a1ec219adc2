"""Test helpers: a real Prefect server and a real `serve` process, started and stopped around tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from cxr.ops.server import stop_process_group, temporary_prefect_server

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
STATE_VARIABLES = {
    "PREFECT_HOME",
    "PREFECT_LOCAL_STORAGE_PATH",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "KERAS_HOME",
    "MPLCONFIGDIR",
}


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A `prefect server start` subprocess with its database in `home`; yields its API URL.

    On exit this process's Prefect log and event workers are drained into it before it stops.
    """
    # A queued run retries for a free concurrency slot after 3 s instead of the default 30 s.
    with (
        mock.patch.dict(os.environ, {"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3"}),
        temporary_prefect_server(home) as api_url,
    ):
        try:
            yield api_url
        finally:
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    """Send what the process-wide log and event workers hold, and stop them (the next use starts new ones).

    Each keeps the API URL it started with. Left running after their server stopped, they would post every
    later log and event to it (the next test's `prefect_test_harness` too), each event retrying for about
    a minute: the harness's exit, which drains them, then took many minutes.
    """
    if "prefect" not in sys.modules:  # nothing in this process talked to the server
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(at_exit=False)
    EventsWorker.drain_all(at_exit=False)


@contextmanager
def repo_process(
    argv: list[str], api_url: str, cxr_home: Path, log_path: Path, **extra_env: str
) -> Iterator[subprocess.Popen]:
    """`python ARGV...` in the repository with its own $CXR_HOME, talking to `api_url`, output to `log_path`.

    It runs in its own session and is stopped with its children on exit.
    """
    # Drop the test session's state paths: the child's configure_environment() derives them from CXR_HOME.
    env = {key: value for key, value in os.environ.items() if key not in STATE_VARIABLES}
    env.update(PREFECT_API_URL=api_url, CXR_HOME=str(cxr_home), PYTHONPATH=str(REPO), **extra_env)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process.pid)


def serving(
    api_url: str, cxr_home: Path, log_path: Path, **serve_kwargs: Any
) -> AbstractContextManager[subprocess.Popen]:
    """`deployments.serve.serve_deployments(**serve_kwargs)` in a subprocess talking to `api_url`.

    `serve_kwargs` must be JSON-serialisable.
    """
    script = (
        "import json, sys\n"
        "from cxr.core.state_folder import configure_environment\n"
        "configure_environment()\n"
        "from deployments.serve import serve_deployments\n"
        "serve_deployments(**json.loads(sys.argv[1]))\n"
    )
    return repo_process(["-c", script, json.dumps(serve_kwargs)], api_url, cxr_home, log_path)


def wait_for(
    check: Callable[[], T], *, timeout_s: float, interval_s: float = 0.5, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
