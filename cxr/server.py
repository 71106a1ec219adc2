"""The local dashboards: a detached Prefect server (runs, deployments, artifacts) and the MLflow UI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr.errors import CxrError
from cxr.state import configure_environment, default_tracking_uri, state_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STARTUP_TIMEOUT_S = 120.0


def _console_script(name: str) -> str:
    """The `prefect`/`mlflow` executable installed beside this interpreter (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def pid_file() -> Path:
    return state_dir("prefect") / "server.pid"


def server_url(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> str:
    return f"http://{host}:{port}"


def is_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """True when a Prefect API answers `GET {api_url}/health` with 200."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def api_url_if_running(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> str | None:
    """The API URL (`http://HOST:PORT/api`) of a Prefect server answering there, else None."""
    api_url = f"{server_url(port, host)}/api"
    return api_url if is_healthy(api_url) else None


def start_prefect_server(port: int, host: str, *, home: Path, log_path: Path) -> subprocess.Popen:
    """Start `prefect server start` detached (own session), storing its database under `home`."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
    )
    command = [_console_script("prefect"), "server", "start", "--host", host, "--port", str(port)]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives the CLI that started it; stopped as a process group
        )


def wait_until_healthy(
    api_url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    """Block until the server answers; raise CxrError with the log's tail if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_healthy(api_url):
            return
        if process.poll() is not None:
            raise CxrError(f"Prefect server exited with code {process.returncode}: {_tail(log_path)}")
        time.sleep(0.5)
    stop_process_group(process.pid)
    raise CxrError(f"Prefect server did not answer on {api_url} within {timeout_s:.0f} s: {_tail(log_path)}")


def _tail(log_path: Path, lines: int = 5) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or f"see {log_path}"


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by `pid` (the server and its workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                # Reap it when it is our child, so it does not linger as a zombie.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not _is_alive(pid):
                    return
            time.sleep(0.2)


def ensure_dashboard(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> str:
    """Return the URL of the Prefect dashboard on HOST:PORT, starting a detached server if none answers.

    The server keeps its database in the state folder's `prefect/` (PREFECT_HOME), logs to
    `prefect/server.log` and records its pid in `prefect/server.pid` for `stop_dashboard()`.
    """
    configure_environment()
    url = server_url(port, host)
    if is_healthy(f"{url}/api"):
        print(f"Prefect dashboard already running: {url}")
        return url
    home = state_dir("prefect")
    log_path = home / "server.log"
    process = start_prefect_server(port, host, home=home, log_path=log_path)
    pid_file().write_text(json.dumps({"pid": process.pid, "url": url}))
    wait_until_healthy(f"{url}/api", process, log_path)
    print(f"Prefect dashboard: {url} (log: {log_path})")
    return url


def stop_dashboard() -> bool:
    """Stop the server `ensure_dashboard` started (from its pid file); False when none was recorded."""
    recorded = pid_file()
    if not recorded.exists():
        return False
    pid = json.loads(recorded.read_text())["pid"]
    if _is_prefect_server(pid):
        stop_process_group(pid)
    recorded.unlink()
    return True


def _is_prefect_server(pid: int) -> bool:
    """Guards against a stale pid file whose pid now belongs to another program."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return _is_alive(pid)  # no /proc (macOS): trust the pid file
    try:
        return b"prefect" in cmdline.read_bytes()
    except OSError:
        return False


def mlflow_ui_command(port: int = 5000, host: str = DEFAULT_HOST) -> list[str]:
    return [
        _console_script("mlflow"),
        "ui",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        default_tracking_uri(),
    ]


def mlflow_ui(port: int = 5000, host: str = DEFAULT_HOST) -> int:
    """Run the MLflow UI on this project's tracking store until Ctrl-C; returns its exit code."""
    configure_environment()
    print(f"MLflow UI: http://{host}:{port} (Ctrl-C to stop)")
    process = subprocess.Popen(mlflow_ui_command(port, host))
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def temporary_prefect_server(home: Path) -> Iterator[str]:
    """A `prefect server start` on a free loopback port with its database in `home`; yields its API URL.

    For tests and benchmarks: the server and its children are stopped on exit.
    """
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    port = free_port()
    api_url = f"{server_url(port)}/api"
    process = start_prefect_server(port, DEFAULT_HOST, home=home, log_path=log_path)
    try:
        wait_until_healthy(api_url, process, log_path)
        yield api_url
    finally:
        stop_process_group(process.pid)
