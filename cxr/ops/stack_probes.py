"""Whether each service of `cxr cluster` answers, asked with the stack's own credentials."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from cxr.ops import stack_security

HOST = "127.0.0.1"
POOL = "cxr"
WORKER_NAME = "cxr-cluster"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> bool:
    """True when `url` answers 200 (the health probes need no credentials)."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status == 200
    except OSError:
        return False


def prefect_worker_status(api_url: str, cluster_dir: Path) -> dict | None:
    """The `cxr` pool's worker as the Prefect server sees it (name, status, last heartbeat), if any."""
    request = urllib.request.Request(
        f"{api_url}/work_pools/{POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json", **stack_security.prefect_auth_header(cluster_dir)},
    )
    try:
        with urllib.request.urlopen(request, timeout=3.0) as response:
            workers = json.loads(response.read())
    except (OSError, ValueError):
        return None
    ours = [worker for worker in workers if worker["name"] == WORKER_NAME]
    if not ours:
        return None
    return {"pool": POOL, "name": WORKER_NAME, "status": ours[0]["status"]}


def dask_worker_count(scheduler: str, cluster_dir: Path, timeout_s: float = 5.0) -> int:
    """How many workers the scheduler has right now (0 when it does not answer)."""
    from distributed import Client

    try:
        with Client(
            scheduler, timeout=timeout_s, security=stack_security.dask_security(cluster_dir)
        ) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])
    except OSError:
        return 0
