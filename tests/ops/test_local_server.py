"""The state folder's long-lived Prefect server: the first `cxr` command that records runs starts it, once.

These tests drop the test session's CXR_PREFECT_SERVER=ephemeral (tests/conftest.py) for their own
state folders, and stop every server they start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from cxr.core.errors import CxrError
from cxr.core.state_folder import PREFECT_STARTUP_TIMEOUT_S
from cxr.ops.prefect_api import SERVER_ENV, choose_prefect_api
from cxr.ops.server import stop_dashboard
from cxr.ops.status import gather_status
from tests.helpers.servers import REPO, STATE_VARIABLES, wait_for

TINY_TRAIN = ["--model", "seed", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--json"]
CPU_BURNER = "while True: pass"


def _cxr_env(home: Path) -> dict[str, str]:
    """A user's environment: no Prefect API, no opt-out, Prefect's own start-up limit; state in `home`."""
    dropped = {
        *STATE_VARIABLES,
        "PREFECT_API_URL",
        SERVER_ENV,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    }
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    return {**env, "CXR_HOME": str(home), "PYTHONPATH": str(REPO)}


def _cxr(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=_cxr_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _server_process_groups(home: Path) -> set[int]:
    """Process groups of the running processes whose Prefect home is `home`'s (the server and its workers)."""
    wanted = f"PREFECT_HOME={home / 'prefect'}".encode()
    groups = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "environ").read_bytes().split(b"\0"):
                groups.add(os.getpgid(int(proc.name)))
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours to read
    return groups


@contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """Processes spinning on the CPU beside the test, as a busy machine has."""
    burners = [subprocess.Popen([sys.executable, "-c", CPU_BURNER]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@contextmanager
def stopped_afterwards(home: Path) -> Iterator[None]:
    """Whatever happens in the body, the state folder's server is stopped on exit."""
    try:
        yield
    finally:
        with mock.patch.dict(os.environ, {"CXR_HOME": str(home)}):
            stop_dashboard()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads processes from /proc")
def test_first_commands_on_a_busy_machine_start_one_server_and_stop_leaves_nothing(tiny_dataset, tmp_path):
    """The first run as a user meets it: two `cxr train` at once, a fresh state folder (cold Prefect
    database) and a CPU burner beside them: more runnable processes than the machine has cores. Both
    succeed against one server that records both runs; `cxr dashboard --stop` leaves no process and
    frees the port."""
    home = tmp_path / "home"
    with stopped_afterwards(home), cpu_burners(1):
        commands = [_cxr(home, "train", "--data", str(tiny_dataset), *TINY_TRAIN) for _ in range(2)]
        finished = [command.communicate(timeout=2 * PREFECT_STARTUP_TIMEOUT_S) for command in commands]
        for command, (_, err) in zip(commands, finished, strict=True):
            assert command.returncode == 0, err[-3000:]
        started = [err for _, err in finished if "starting the local Prefect server" in err]
        assert len(started) == 1, "exactly one command starts the server"
        record = json.loads((home / "prefect" / "server.pid").read_text())
        assert _server_process_groups(home) == {record["pid"]}

        # Both runs are in that server's database: `cxr status` and the dashboard show them without another step.
        state = {
            "CXR_HOME": str(home),
            SERVER_ENV: "local",
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
        }
        with mock.patch.dict(os.environ, state):
            os.environ.pop("PREFECT_API_URL", None)  # a test server of this session must not stand in for it
            status = gather_status()
        assert status["local_server"] == {**record, "up": True, "log": str(home / "prefect" / "server.log")}
        assert status["dashboard_url"] == record["url"]
        assert [run["state"] for run in status["recent_runs"]] == ["Completed"] * 2
        assert status["champion"]["version"] == 1

        stop = _cxr(home, "dashboard", "--stop")
        assert "dashboard stopped" in stop.communicate(timeout=120)[0] and stop.returncode == 0
        wait_for(lambda: not _server_process_groups(home), timeout_s=30, what="server processes to exit")
        assert not (home / "prefect" / "server.pid").exists()
        port = int(record["url"].rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_prefect_api_url_wins_and_the_opt_out_uses_the_temporary_server(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert choose_prefect_api() == "http://127.0.0.1:9/api"  # used as given: nothing is started
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv(SERVER_ENV, "ephemeral")
    assert choose_prefect_api() is None
    monkeypatch.setenv(SERVER_ENV, "local")
    assert choose_prefect_api(start=False) is None  # only looks: no server in this state folder
    assert not (tmp_path / "home" / "prefect" / "server.pid").exists()
    monkeypatch.setenv(SERVER_ENV, "temporary")
    with pytest.raises(CxrError, match="CXR_PREFECT_SERVER must be local or ephemeral"):
        choose_prefect_api()


def test_prefects_own_temporary_server_gets_the_projects_start_up_limit(tmp_path):
    """Where Prefect's temporary server is still used, it waits as long as the project's servers do."""
    script = (
        "import os\nfrom cxr.core.state_folder import configure_environment\nconfigure_environment()\n"
        "print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_cxr_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(done.stdout) == PREFECT_STARTUP_TIMEOUT_S > 20


def test_a_free_port_lies_below_the_range_outgoing_connections_take_theirs_from():
    from cxr.ops.server import LISTEN_PORTS_LOW, _outgoing_ports_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(LISTEN_PORTS_LOW <= port < _outgoing_ports_low() for port in ports) and len(ports) > 1
    for port in ports:  # each is free to listen on
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
