"""`cxr cluster`: the real stack (PostgreSQL, Prefect server and worker, Dask scheduler and workers, MLflow
tracking server) brought up once for this module, a retraining run on it, and its faults: a Dask worker
killed mid-ingest, the Prefect server restarted between two runs, the tracking server down at `register`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxr import REGISTERED_MODEL_NAME
from cxr.ops import postgres

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres.is_available(), reason=f"no PostgreSQL: {postgres.INSTALL_HINT}"),
]

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "seed", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--json"]
TIMEOUT_S = 300
# The first process to start an ingest check SIGKILLs itself: one Dask worker, lost mid-ingest.
KILL_A_WORKER = "kill_once_ingest_check:1"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A `cxr` process's environment: this module's state folder, nothing inherited that names a server."""
    inherited = ("PREFECT_", "MLFLOW_", "CXR_", "KERAS_HOME", "MPLCONFIGDIR")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    env.update(CXR_HOME=str(home), PYTHONPATH=str(REPO), **extra)
    return env


def _cxr(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tiny_dataset) -> SimpleNamespace:
    """`cxr cluster up --workers 2` in a state folder of its own; `cxr cluster down` after the module."""
    # Under /tmp and open to others: PostgreSQL runs as its own user when the tests run as root.
    home = Path(tempfile.mkdtemp(prefix="cxr-cluster-", dir="/tmp"))
    home.chmod(0o755)
    up = _cxr(home, "cluster", "up", "--workers", "2", "--json", CXR_FAULTS=KILL_A_WORKER)
    endpoints_file = home / "cluster" / "endpoints.json"
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        endpoints = json.loads(endpoints_file.read_text())
        yield SimpleNamespace(home=home, data=tiny_dataset, status=_last_json(up), endpoints=endpoints)
    finally:
        down = _cxr(home, "cluster", "down", "--json")
        ports = json.loads(endpoints_file.read_text())["ports"] if endpoints_file.exists() else {}
        shutil.rmtree(home, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not endpoints_file.exists()
    assert not [name for name, port in ports.items() if _listening(port)]


def _api(api_url: str, path: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{api_url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _flow_run_states(api_url: str) -> dict[str, str]:
    return {run["id"]: run["state_type"] for run in _api(api_url, "/flow_runs/filter", {})}


def _versions(tracking_uri: str) -> list[str]:
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri).search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    return sorted(str(version.version) for version in found)


def test_up_brings_every_service_and_status_shows_it(stack):
    status = _last_json(_cxr(stack.home, "cluster", "status", "--json"))
    assert status["up"] is True
    assert status["prefect_api_url"] == stack.endpoints["prefect_api_url"]
    assert status["database"].startswith("postgresql://cxr@127.0.0.1:")
    assert status["dask_scheduler"] == stack.endpoints["dask_scheduler"]
    assert status["dask_workers"] == 2
    assert status["mlflow_tracking_uri"] == stack.endpoints["mlflow_tracking_uri"]
    assert status["prefect_worker"] == {"pool": "cxr", "name": "cxr-cluster", "status": "ONLINE"}
    # PostgreSQL asks every client for its password: no trust, no unix socket.
    hba = (stack.home / "cluster" / "postgres" / "data" / "pg_hba.conf").read_text()
    assert "trust" not in hba and "scram-sha-256" in hba


def test_a_run_lands_on_the_stack_and_survives_a_lost_dask_worker(stack):
    run = _cxr(stack.home, "train", "--data", str(stack.data), *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = _last_json(run)
    # One worker died at its first ingest check; the scheduler gave the check to another worker.
    assert (stack.home / "faults" / "kill_once_ingest_check").exists()
    assert summary["executor"] == stack.endpoints["dask_scheduler"]
    assert _flow_run_states(stack.endpoints["prefect_api_url"])[summary["flow_run_id"]] == "COMPLETED"
    assert str(summary["model_version"]) in _versions(stack.endpoints["mlflow_tracking_uri"])
    stack.first_run = summary


def test_the_next_run_goes_on_after_the_prefect_server_restarts(stack, monkeypatch):
    from cxr.ops import cluster

    assert hasattr(stack, "first_run"), "needs the run of the test before"
    api_url = stack.endpoints["prefect_api_url"]
    monkeypatch.setenv("CXR_HOME", str(stack.home))
    cluster.stop_service("prefect-server")
    assert not cluster.is_healthy(api_url)
    again = _cxr(stack.home, "cluster", "up", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _last_json(again)["prefect_worker"]["status"] == "ONLINE"
    run = _cxr(stack.home, "train", "--data", str(stack.data), *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    states = _flow_run_states(api_url)
    # The earlier run is still on record (PostgreSQL kept it) and the new one completed.
    assert states[stack.first_run["flow_run_id"]] == "COMPLETED"
    assert states[_last_json(run)["flow_run_id"]] == "COMPLETED"


def test_a_tracking_server_down_at_register_fails_clearly_after_retries_with_nothing_registered(
    stack, monkeypatch
):
    from cxr.ops import cluster

    monkeypatch.setenv("CXR_HOME", str(stack.home))
    before = _versions(stack.endpoints["mlflow_tracking_uri"])
    cluster.stop_service("mlflow-server")
    try:
        # A new seed trains a new model, so `register` has to reach the server; one HTTP try per call.
        run = _cxr(
            stack.home, "train", "--data", str(stack.data), *TINY, "--seed", "7",
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        )  # fmt: skip
    finally:
        assert _cxr(stack.home, "cluster", "up", "--json").returncode == 0
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.count("Task run failed with") >= 3  # register's retries
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model registry:") and stack.endpoints["mlflow_tracking_uri"] in error
    assert _versions(stack.endpoints["mlflow_tracking_uri"]) == before
