"""Which Prefect API a `cxr` command records its runs and events in: the one place that decides."""

from __future__ import annotations

import os

from cxr.core.errors import CxrError
from cxr.ops.server import ensure_local_server, local_server_status

# Where runs go when $PREFECT_API_URL is not set: "local" (default), the state folder's long-lived server;
# "ephemeral", Prefect's temporary in-process server (started by each command, gone with it; for tests).
SERVER_ENV = "CXR_PREFECT_SERVER"
LOCAL, EPHEMERAL = "local", "ephemeral"


def choose_prefect_api(*, start: bool = True) -> str | None:
    """The Prefect API URL to use, or None for Prefect's temporary server.

    $PREFECT_API_URL wins (a shared server); else, unless $CXR_PREFECT_SERVER=ephemeral, the state
    folder's local server, started when `start` and not up (without `start`: None when it is not up).
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return configured
    mode = os.environ.get(SERVER_ENV, LOCAL).strip().lower() or LOCAL
    if mode not in (LOCAL, EPHEMERAL):
        raise CxrError(f"{SERVER_ENV} must be {LOCAL} or {EPHEMERAL}, not {mode!r}")
    if mode == EPHEMERAL:
        return None
    if start:
        return f"{ensure_local_server()}/api"
    running = local_server_status()
    return f"{running['url']}/api" if running and running["up"] else None


def use_prefect_api() -> None:
    """Point this process, and the processes it starts, at `choose_prefect_api()`.

    Call before Prefect is imported: it reads its settings once.
    """
    api_url = choose_prefect_api()
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
