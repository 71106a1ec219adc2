"""`cxr cluster`: the real stack (PostgreSQL, Prefect server and worker, Dask scheduler and workers, MLflow
tracking server) brought up once for this module, in a state folder below a parent only its owner may enter (as
root: one PostgreSQL's user cannot enter); its locks (no caller without credentials gets in), a retraining run on
it, and its faults: a Dask worker killed mid-ingest, the Prefect server restarted between two runs, the tracking
server down at `register`.
"""

from __future__ import annotations

import base64
import gc
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxr import REGISTERED_MODEL_NAME
from cxr.ops import postgres, stack_security

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres.is_available(), reason=f"no PostgreSQL: {postgres.INSTALL_HINT}"),
    pytest.mark.skipif(
        importlib.util.find_spec("flask_wtf") is None, reason=stack_security.AUTH_INSTALL_HINT
    ),
]

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "seed", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--json"]
TIMEOUT_S = 600  # a tiny run on the stack took 245-300 s on this 2-core machine at load average 10-16
# The first process to start an ingest check SIGKILLs itself: one Dask worker, lost mid-ingest.
KILL_A_WORKER = "kill_once_ingest_check:1"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A `cxr` process's environment: this module's state folder, nothing inherited that names a server."""
    inherited = ("PREFECT_", "MLFLOW_", "CXR_", "KERAS_HOME", "MPLCONFIGDIR")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    # This checkout first; the caller's entries after it (where optional packages may have been installed).
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(CXR_HOME=str(home), PYTHONPATH=path, **extra)
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
    # Below a mode-0700 parent (`mktemp -d`, a container's /root): as root, PostgreSQL's user cannot enter it.
    parent = Path(tempfile.mkdtemp(prefix="cxr-cluster-"))
    home = parent / "home"
    up = _cxr(home, "cluster", "up", "--workers", "2", "--json", CXR_FAULTS=KILL_A_WORKER)
    endpoints_file = home / "cluster" / "endpoints.json"
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        endpoints = json.loads(endpoints_file.read_text())
        yield SimpleNamespace(home=home, data=tiny_dataset, status=_last_json(up), endpoints=endpoints)
    finally:
        down = _cxr(home, "cluster", "down", "--json")
        ports = json.loads(endpoints_file.read_text())["ports"] if endpoints_file.exists() else {}
        data = (home / "cluster" / "postgres" / "data").resolve()
        shutil.rmtree(parent, ignore_errors=True)
        if not data.is_relative_to(parent):  # placed beside ~postgres as root
            shutil.rmtree(data.parent, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert not endpoints_file.exists()
    assert not [name for name, port in ports.items() if _listening(port)]


def _credentials(home: Path) -> dict[str, str]:
    """The files `cxr cluster status --json` names."""
    return _last_json(_cxr(home, "cluster", "status", "--json"))["credentials"]


def _api(home: Path, api_url: str, path: str, body: dict | None = None, auth: bool = True) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        secret = Path(_credentials(home)["prefect_auth_string"]).read_bytes().strip()
        headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
    request = urllib.request.Request(f"{api_url}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _flow_run_states(home: Path, api_url: str) -> dict[str, str]:
    return {run["id"]: run["state_type"] for run in _api(home, api_url, "/flow_runs/filter", {})}


def _versions(home: Path, tracking_uri: str) -> list[str]:
    """The registered versions, as a stock MLflow client with the credentials from status's files sees them."""
    from mlflow import MlflowClient

    credentials = _credentials(home)
    password = Path(credentials["mlflow_admin_password"]).read_text().strip()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", credentials["mlflow_username"])
        env.setenv("MLFLOW_TRACKING_PASSWORD", password)
        found = MlflowClient(tracking_uri).search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    return sorted(str(version.version) for version in found)


def _status_code(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


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
    if os.geteuid() == 0:  # its user cannot enter the state folder: the data lives beside ~postgres
        assert (stack.home / "cluster" / "postgres" / "data").is_symlink()
    # status names the credential files, each readable by its owner only, and shows no secret.
    files = {name: Path(path) for name, path in status["credentials"].items() if name != "mlflow_username"}
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files.values())
    secrets = [path.read_text().strip() for name, path in files.items() if "tls" not in name]
    assert not any(secret in json.dumps(status) for secret in secrets)


def test_no_service_answers_a_caller_without_credentials(stack):
    from distributed import Client, Security

    flows = urllib.request.Request(
        f"{stack.endpoints['prefect_api_url']}/flow_runs/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert _status_code(flows) == 401
    models = f"{stack.endpoints['mlflow_tracking_uri']}/api/2.0/mlflow/registered-models/search"
    assert _status_code(urllib.request.Request(models)) == 401
    wrong = urllib.request.Request(
        models, headers={"Authorization": "Basic " + base64.b64encode(b"admin:x").decode()}
    )
    assert _status_code(wrong) == 401
    # The dashboard asks a browser for the auth string (Prefect's UI reads this before any API call).
    ui = stack.endpoints["prefect_api_url"].removesuffix("/api")
    assert json.loads(urllib.request.urlopen(f"{ui}/ui-settings", timeout=10).read())["auth"] == "BASIC"
    # Dask: plain TCP, TLS without a client certificate, a certificate of another CA: all refused.
    scheduler = stack.endpoints["dask_scheduler"]
    ca_only = Security(tls_ca_file=stack.status["credentials"]["dask_tls_ca_file"], require_encryption=True)
    other = stack.home.parent / "other-ca"
    stack_security.ensure_secrets(other, "postgresql://x")
    refused = (
        (scheduler.replace("tls://", "tcp://"), None),
        (scheduler, ca_only),
        (scheduler, stack_security.dask_security(other)),
    )
    for address, security in refused:
        # A Client that failed to connect is closed by its __del__; collected inside the next Client's start,
        # that close waits on the loop lock the start holds (distributed deadlocks), so collect it here.
        gc.collect()
        with pytest.raises((OSError, TypeError)):
            Client(address, security=security, timeout=5)
    gc.collect()
    with Client(
        scheduler, security=stack_security.dask_security(stack.home / "cluster"), timeout=10
    ) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2


def test_a_run_lands_on_the_stack_and_survives_a_lost_dask_worker(stack):
    run = _cxr(stack.home, "train", "--data", str(stack.data), *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = _last_json(run)
    # One worker died at its first ingest check; the scheduler gave the check to another worker.
    assert (stack.home / "faults" / "kill_once_ingest_check").exists()
    assert summary["executor"] == stack.endpoints["dask_scheduler"]
    assert (
        _flow_run_states(stack.home, stack.endpoints["prefect_api_url"])[summary["flow_run_id"]]
        == "COMPLETED"
    )
    assert str(summary["model_version"]) in _versions(stack.home, stack.endpoints["mlflow_tracking_uri"])
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
    states = _flow_run_states(stack.home, api_url)
    # The earlier run is still on record (PostgreSQL kept it) and the new one completed.
    assert states[stack.first_run["flow_run_id"]] == "COMPLETED"
    assert states[_last_json(run)["flow_run_id"]] == "COMPLETED"


def test_a_tracking_server_down_at_register_fails_clearly_after_retries_with_nothing_registered(
    stack, monkeypatch
):
    from cxr.ops import cluster

    monkeypatch.setenv("CXR_HOME", str(stack.home))
    before = _versions(stack.home, stack.endpoints["mlflow_tracking_uri"])
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
    # The first stage that reads the registry (the drift check asks for the champion) fails as transient and is
    # retried; a registry that does not answer never reads as "no champion yet".
    assert run.stderr.count("Task run failed with") >= 2, run.stderr[-6000:]
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error:") and "registry" in error, error
    assert stack.endpoints["mlflow_tracking_uri"] in error
    assert _versions(stack.home, stack.endpoints["mlflow_tracking_uri"]) == before


def test_no_secret_on_any_command_line_or_in_the_services_logs(stack):
    """Last: after `up`, runs, a restart and a failed `register` have had their chance to leak one."""
    credentials = _credentials(stack.home)
    secrets = [
        Path(credentials[name]).read_text().strip().split(":")[-1]
        for name in (
            "prefect_auth_string",
            "mlflow_admin_password",
            "mlflow_flask_secret_key",
            "postgres_password",
        )
    ]
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command_lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # a process that exited meanwhile
    logs = [*(stack.home / "cluster" / "logs").glob("*.log"), *(stack.home / "prefect").rglob("*.log")]
    logs.append((stack.home / "cluster" / "postgres" / "data").resolve().parent / "postgres.log")
    texts = [path.read_text(errors="replace") for path in logs if path.is_file()]
    assert len(texts) >= 6  # every service's log was read
    leaks = [secret[:4] for secret in secrets if any(secret in text for text in command_lines + texts)]
    assert not leaks
