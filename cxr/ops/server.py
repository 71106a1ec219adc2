"""The local dashboards: a detached Prefect server (runs, deployments, artifacts) and the MLflow UI."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cxr.core.errors import CxrError
from cxr.core.locking import file_lock
from cxr.core.state_folder import (
    PREFECT_STARTUP_TIMEOUT_S,
    configure_environment,
    default_tracking_uri,
    state_dir,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
# Free ports for services are drawn from here up to the kernel's outgoing range (`free_port`).
LISTEN_PORTS_LOW = 20000
FREE_PORT_TRIES = 50
STARTUP_TIMEOUT_S = float(PREFECT_STARTUP_TIMEOUT_S)


def _console_script(name: str) -> str:
    """The `prefect`/`mlflow` executable installed beside this interpreter (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def pid_file() -> Path:
    return state_dir("prefect") / "server.pid"


def log_file() -> Path:
    return state_dir("prefect") / "server.log"


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
            raise CxrError(f"Prefect server exited with code {process.returncode}: {log_tail(log_path)}")
        time.sleep(0.5)
    stop_process_group(process.pid)
    raise CxrError(
        f"Prefect server did not answer on {api_url} within {timeout_s:.0f} s: {log_tail(log_path)}"
    )


def log_tail(log_path: Path, lines: int = 5) -> str:
    """The last lines of a service's log on one line (its path when it has none): what an error should show."""
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


def running_server() -> dict | None:
    """The state folder's server from its pid file (`{"pid", "url"}`), while that process runs."""
    try:
        record = json.loads(pid_file().read_text())
    except (OSError, ValueError):
        return None
    return record if _is_prefect_server(record["pid"]) else None


def local_server_status() -> dict | None:
    """The state folder's server for `cxr status`: pid, url, whether it answers, its log; None when not running."""
    record = running_server()
    if record is None:
        return None
    return {**record, "up": is_healthy(f"{record['url']}/api"), "log": str(log_file())}


def ensure_local_server(port: int | None = None, host: str = DEFAULT_HOST) -> str:
    """The URL of the state folder's Prefect server, started detached when it is not up.

    Its database lives in the state folder's `prefect/` (PREFECT_HOME), its log in `prefect/server.log`,
    its pid in `prefect/server.pid`. Commands starting at once take turns on a lock, so one starts it
    and the others use it. `port` None: 4200, or a free port when 4200 is taken.
    """
    configure_environment()
    with _server_lock():
        record = running_server()
        if record and is_healthy(f"{record['url']}/api"):
            return record["url"]
        if record:  # alive but not answering: its starter gave up on it
            stop_process_group(record["pid"])
        if port is None:
            port = DEFAULT_PORT if _port_free(DEFAULT_PORT, host) else free_port(host)
        elif is_healthy(f"{server_url(port, host)}/api"):
            return server_url(port, host)  # a server this state folder did not start, on the port asked for
        return _start_local_server(port, host)


def _server_lock() -> AbstractContextManager[Path]:
    """Held while the state folder's server is started or stopped; a waiter needs room for a cold start."""
    return file_lock(state_dir("prefect") / "server.lock", timeout_s=STARTUP_TIMEOUT_S + 60)


def _start_local_server(port: int, host: str) -> str:
    url = server_url(port, host)
    log_path = log_file()
    _say(f"starting the local Prefect server on {url} (log: {log_path}); a first start sets up its database")
    started = time.monotonic()
    process = start_prefect_server(port, host, home=state_dir("prefect"), log_path=log_path)
    pid_file().write_text(json.dumps({"pid": process.pid, "url": url}))
    try:
        wait_until_healthy(f"{url}/api", process, log_path)
    except CxrError:
        pid_file().unlink(missing_ok=True)
        raise
    _say(
        f"local Prefect server up after {time.monotonic() - started:.0f} s; it stays up (`cxr dashboard --stop`)"
    )
    return url


def _say(message: str) -> None:
    """Progress on stderr, so `--json` output on stdout stays one object."""
    print(f"cxr: {message}", file=sys.stderr, flush=True)


def _port_free(port: int, host: str) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_dashboard(port: int | None = None, host: str = DEFAULT_HOST) -> str:
    """Return the URL of the state folder's Prefect dashboard, starting its server if it is not up."""
    url = ensure_local_server(port, host)
    print(f"Prefect dashboard: {url} (log: {log_file()}; `cxr dashboard --stop` stops it)")
    return url


def stop_dashboard() -> bool:
    """Stop the state folder's server (from its pid file); False when none was recorded."""
    with _server_lock():
        recorded = pid_file()
        if not recorded.exists():
            return False
        record = running_server()
        if record is not None:
            stop_process_group(record["pid"])
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
    """A port nobody uses right now, below the kernel's range for outgoing connections: a port from that range
    can be taken as the local end of some connection between this check and the service binding it."""
    low = _outgoing_ports_low()
    for port in random.sample(
        range(LISTEN_PORTS_LOW, low), min(FREE_PORT_TRIES, max(0, low - LISTEN_PORTS_LOW))
    ):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded or unusual range: any port the kernel gives
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _outgoing_ports_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (Linux; 32768 where unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


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
