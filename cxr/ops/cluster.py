"""`cxr cluster`: the production stack on this machine, its data in `$CXR_HOME/cluster/`.

PostgreSQL (cxr.ops.postgres) holds the Prefect server's and the MLflow tracking server's databases; a Dask
scheduler with N worker processes runs the mapped tasks; a Prefect worker on the `cxr` pool runs the
deployments. Every service listens on 127.0.0.1, on free ports chosen by the first `up` and kept in
`cluster/endpoints.json` until `down`, so a service restarted by a later `up` comes back where its
clients look. While that file exists every `cxr` command uses the stack (`use_stack_if_up`), with the
credentials `cxr.ops.stack_security` generated at the first `up`: no service answers a caller without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from cxr.core.atomic_files import write_atomically
from cxr.core.errors import CxrError
from cxr.core.locking import file_lock
from cxr.core.state_folder import cxr_home
from cxr.ops import postgres, stack_probes, stack_security
from cxr.ops.server import _console_script, free_port, is_healthy, log_tail, stop_process_group
from cxr.ops.stack_probes import HOST, POOL, WORKER_NAME, dask_worker_count, prefect_worker_status

START_TIMEOUT_S = 150.0
LOCK_TIMEOUT_S = 2 * START_TIMEOUT_S  # another `up` or `down` of the same state folder finishes first
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The variables a `cxr` command takes from the endpoints file unless the user set them.
DASK_ENV = ("CXR_DASK_ADDRESS", "CXR_DASK_SCHEDULER")  # the flow reads the first; the second is documented
STACK_ENV = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", *DASK_ENV)
STATUS_KEYS = (
    "prefect_api_url",
    "database",
    "dask_scheduler",
    "dask_workers",
    "mlflow_tracking_uri",
    "prefect_worker",
)


def cluster_dir() -> Path:
    return cxr_home() / "cluster"


def endpoints_path() -> Path:
    return cluster_dir() / "endpoints.json"


def read_endpoints() -> dict | None:
    path = endpoints_path()
    return json.loads(path.read_text()) if path.exists() else None


def _write_endpoints(endpoints: dict) -> None:
    write_atomically(endpoints_path(), lambda tmp: tmp.write_text(json.dumps(endpoints, indent=2)))


def use_stack_if_up() -> None:
    """Point Prefect, MLflow and the flow's Dask runner at the stack `cxr cluster up` started (if any).

    Called before Prefect is imported; a variable the user set wins.
    """
    endpoints = read_endpoints()
    if endpoints is None:
        return
    os.environ.setdefault("PREFECT_API_URL", endpoints["prefect_api_url"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", endpoints["mlflow_tracking_uri"])
    if not any(os.environ.get(name) for name in DASK_ENV):
        os.environ[DASK_ENV[0]] = endpoints["dask_scheduler"]
    if not stack_security.secrets_dir(cluster_dir()).exists():
        return  # a stack started before its services asked for credentials
    # The stack's credentials go only to the stack's own servers (a variable the user set still wins).
    ours = {
        "PREFECT_": os.environ["PREFECT_API_URL"] == endpoints["prefect_api_url"],
        "MLFLOW_": os.environ["MLFLOW_TRACKING_URI"] == endpoints["mlflow_tracking_uri"],
        "DASK_": any(os.environ.get(name) == endpoints["dask_scheduler"] for name in DASK_ENV),
    }
    for name, value in stack_security.client_env(cluster_dir()).items():
        if ours[name.split("_")[0] + "_"]:
            os.environ.setdefault(name, value)


def _new_endpoints(workers: int) -> dict:
    ports = {name: free_port() for name in ("postgres", "prefect", "dask", "dask_http", "mlflow")}
    return {
        "ports": ports,
        "workers": workers,
        "pids": {},
        "prefect_api_url": f"http://{HOST}:{ports['prefect']}/api",
        "dask_scheduler": f"tls://{HOST}:{ports['dask']}",
        "mlflow_tracking_uri": f"http://{HOST}:{ports['mlflow']}",
    }


def _database(endpoints: dict) -> postgres.Postgres:
    return postgres.Postgres(cluster_dir() / "postgres", endpoints["ports"]["postgres"])


def _client_env(endpoints: dict) -> dict[str, str]:
    """What every process of the stack inherits: this state folder, this code, the stack's addresses."""
    env = {key: value for key, value in os.environ.items() if key not in STACK_ENV}
    # A deployment loads `flows/retrain.py` as the module `retrain`, and the task context that Dask workers
    # unpickle refers to it by that name: they need `flows/` on their path too.
    project = [str(PROJECT_ROOT), str(PROJECT_ROOT / "flows")]
    path = os.pathsep.join(filter(None, [*project, env.get("PYTHONPATH")]))
    env.update(
        CXR_HOME=str(cxr_home()),
        PYTHONPATH=path,
        PREFECT_API_URL=endpoints["prefect_api_url"],
        MLFLOW_TRACKING_URI=endpoints["mlflow_tracking_uri"],
        CXR_DASK_ADDRESS=endpoints["dask_scheduler"],
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    env.update(stack_security.client_env(cluster_dir()))
    return env


def _services(endpoints: dict) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (command, environment) of every process of the stack but PostgreSQL."""
    ports, root, db = endpoints["ports"], cluster_dir(), _database(endpoints)
    env = _client_env(endpoints)
    server_env = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}
    server_env.update(
        PREFECT_HOME=str(root / "prefect-server"),
        PREFECT_API_DATABASE_CONNECTION_URL=db.url("prefect", "postgresql+asyncpg"),
        PREFECT_UI_API_URL=endpoints["prefect_api_url"],  # else the dashboard calls the default port
        **postgres.PREFECT_SERVER_DATABASE_ENV,
        **stack_security.prefect_server_env(root),
    )
    # Secrets in the environment, never on a command line (`ps` shows that to every user).
    mlflow_env = {
        **env,
        "MLFLOW_BACKEND_STORE_URI": db.url("mlflow"),
        **stack_security.mlflow_server_env(root),
    }
    tls, dask_env = stack_security.dask_tls_args(root), {**env, **stack_security.dask_server_env()}
    prefect, dask, mlflow = (_console_script(name) for name in ("prefect", "dask", "mlflow"))
    services = {
        "prefect-server": (
            [prefect, "server", "start", "--host", HOST, "--port", str(ports["prefect"])],
            server_env,
        ),
        "dask-scheduler": (
            [
                dask,
                "scheduler",
                "--host",
                HOST,
                "--port",
                str(ports["dask"]),
                "--protocol",
                "tls",
                *tls,
                "--no-dashboard",
                "--dashboard-address",
                f"{HOST}:{ports['dask_http']}",
            ],
            dask_env,
        ),
        "mlflow-server": (
            [
                mlflow,
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                HOST,
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
                "--artifacts-destination",
                str(root / "mlflow-artifacts"),
            ],
            mlflow_env,
        ),  # fmt: skip
        "prefect-worker": (
            [prefect, "worker", "start", "--pool", POOL, "--type", "process", "--name", WORKER_NAME],
            env,
        ),
    }
    for index in range(1, endpoints["workers"] + 1):
        services[f"dask-worker-{index}"] = (
            [dask, "worker", endpoints["dask_scheduler"], "--host", HOST, "--nthreads", "1", *tls,
             "--no-dashboard", "--dashboard-address", f"{HOST}:0", "--name", f"cxr-worker-{index}",
             "--local-directory", str(root / "dask" / f"worker-{index}")],
            dask_env,
        )  # fmt: skip
    return services


def _spawn(name: str, command: list[str], env: dict[str, str]) -> int:
    """Start one service detached (own session, survives the CLI), its output in `cluster/logs/NAME.log`."""
    logs = cluster_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return process.pid


def is_running(pid: int | None) -> bool:
    """True when `pid` is a live process of the stack (not a zombie, not a stranger that reused the pid)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and any(
        word in cmdline for word in (b"prefect", b"dask", b"mlflow")
    )


def _ready_checks(endpoints: dict) -> dict[str, Callable[[], bool]]:
    """name -> a check that the service answers (not only that its process lives)."""
    root = cluster_dir()
    return {
        "prefect-server": lambda: is_healthy(endpoints["prefect_api_url"]),
        "dask-scheduler": lambda: stack_probes.port_open(endpoints["ports"]["dask"]),
        "mlflow-server": lambda: stack_probes.http_ok(f"{endpoints['mlflow_tracking_uri']}/health"),
        "dask-workers": lambda: dask_worker_count(endpoints["dask_scheduler"], root) >= endpoints["workers"],
        "prefect-worker": lambda: prefect_worker_status(endpoints["prefect_api_url"], root) is not None,
    }


def _wait_ready(name: str, check: Callable[[], bool], endpoints: dict, deadline: float) -> None:
    while time.monotonic() < deadline:
        if check():
            return
        service = name.rstrip("s")  # "dask-workers": any "dask-worker-N"
        dead = [n for n, pid in endpoints["pids"].items() if n.startswith(service) and not is_running(pid)]
        if dead:
            log = cluster_dir() / "logs" / f"{dead[0]}.log"
            raise CxrError(f"{dead[0]} exited while starting ({log}): {log_tail(log)}")
        time.sleep(0.5)
    raise CxrError(f"{name} not ready within {START_TIMEOUT_S:.0f} s: see {cluster_dir() / 'logs'}")


def _start_missing(endpoints: dict, services: dict, names: list[str]) -> None:
    for name in names:
        if not is_running(endpoints["pids"].get(name)):
            endpoints["pids"][name] = _spawn(name, *services[name])
    _write_endpoints(endpoints)  # before waiting: `down` can stop a half-started stack


def _lock() -> AbstractContextManager[Path]:
    """One `up` or `down` at a time per state folder (two `up`s could renew a half-made folder's secrets)."""
    return file_lock(cluster_dir() / "cluster.lock", LOCK_TIMEOUT_S)


def up(workers: int = 2) -> dict:
    """Start whatever part of the stack is not running (all of it the first time) and wait until it answers."""
    if not postgres.is_available():
        raise CxrError(postgres.INSTALL_HINT)
    stack_security.check_installed()
    with _lock():
        _up(workers)
    return status()


def _up(workers: int) -> None:
    recorded = read_endpoints()
    endpoints = recorded or _new_endpoints(workers)
    endpoints["workers"] = max(workers, endpoints["workers"]) if recorded else workers
    database = _database(endpoints)
    postgres.initialise(database)
    postgres.start(database)
    postgres.ensure_databases(database, "prefect", "mlflow", stack_security.MLFLOW_AUTH_DATABASE)
    stack_security.ensure_secrets(cluster_dir(), database.url(stack_security.MLFLOW_AUTH_DATABASE))
    deadline = time.monotonic() + START_TIMEOUT_S
    checks = _ready_checks(endpoints)
    services = _services(endpoints)
    _start_missing(endpoints, services, [name for name in services if name != "prefect-worker"])
    # The Prefect worker needs the server: it starts once the server answers.
    _wait_ready("prefect-server", checks["prefect-server"], endpoints, deadline)
    _start_missing(endpoints, services, ["prefect-worker"])
    for name in ("dask-scheduler", "dask-workers", "mlflow-server", "prefect-worker"):
        _wait_ready(name, checks[name], endpoints, deadline)


def down() -> dict:
    """Stop every process of the stack (the Prefect worker first, PostgreSQL last); the data stays."""
    with _lock():
        return _down()


def _down() -> dict:
    endpoints = read_endpoints()
    if endpoints is None:
        return {"stopped": []}
    running = {name: pid for name, pid in endpoints["pids"].items() if is_running(pid)}
    worker = running.pop("prefect-worker", None)
    if worker:  # first, so it does not take new runs from a server going away
        stop_process_group(worker)
    with ThreadPoolExecutor(max_workers=len(running) or 1) as pool:  # each may take seconds to exit
        list(pool.map(stop_process_group, running.values()))
    stopped = (["prefect-worker"] if worker else []) + sorted(running)
    database = _database(endpoints)
    if postgres.is_running(database):
        postgres.stop(database)
        stopped.append("postgres")
    endpoints_path().unlink()
    return {"stopped": stopped}


def stop_service(name: str) -> None:
    """Stop one service of a running stack (`cxr cluster up` brings it back on the same port)."""
    endpoints = read_endpoints()
    pid = (endpoints or {}).get("pids", {}).get(name)
    if not is_running(pid):
        raise CxrError(f"{name} is not running")
    stop_process_group(pid)


def status() -> dict:
    """What answers now: each field is None (or 0 workers) for a service that is down."""
    endpoints = read_endpoints()
    credentials = stack_security.credentials(cluster_dir())  # where they are, never what they hold
    if endpoints is None:
        down = {**dict.fromkeys(STATUS_KEYS), "dask_workers": 0}
        return {"up": False, **down, "state_dir": str(cluster_dir()), "credentials": credentials}
    root = cluster_dir()
    checks = _ready_checks(endpoints)
    database = _database(endpoints)
    report = {
        "prefect_api_url": endpoints["prefect_api_url"] if checks["prefect-server"]() else None,
        "database": database.public_url() if postgres.is_running(database) else None,
        "dask_scheduler": endpoints["dask_scheduler"] if checks["dask-scheduler"]() else None,
        "dask_workers": dask_worker_count(endpoints["dask_scheduler"], root)
        if checks["dask-scheduler"]()
        else 0,
        "mlflow_tracking_uri": endpoints["mlflow_tracking_uri"] if checks["mlflow-server"]() else None,
        "prefect_worker": prefect_worker_status(endpoints["prefect_api_url"], root)
        if is_running(endpoints["pids"].get("prefect-worker"))
        else None,
    }
    complete = all(value for value in report.values()) and report["dask_workers"] >= endpoints["workers"]
    return {"up": complete, **report, "state_dir": str(root), "credentials": credentials}
