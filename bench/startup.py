"""Start-up measure: what a `cxr` command pays before its flow starts, with and without a server up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from bench.orchestration import RERUN_MODEL, cxr_train
from bench.suite import Context


def measure_startup(context: Context) -> dict[str, Any]:
    """Fully cached `cxr train` runs (the orchestration measure's workload) that find their Prefect server
    as a user's do: first with none in the state folder (the command starts it, on a cold database), then
    with it up. Each from CLI start to flow start (the run's start on the server), and the cached run's wall.
    """
    from cxr.ops.server import stop_dashboard

    sizes = context.sizes
    kwargs = {"image_size": sizes.rerun_image_size, "epochs": sizes.rerun_epochs, "model": RERUN_MODEL}
    try:
        no_server = _timed_train(context.data.rerun_dir, kwargs)
        with_server = _timed_train(context.data.rerun_dir, kwargs)
    finally:
        stop_dashboard()  # the bench's state folder is thrown away; its server goes with it
    return {
        "startup_no_server_s": no_server["to_flow_start_s"],
        "startup_with_server_s": with_server["to_flow_start_s"],
        "train_cached_with_server_wall_s": with_server["wall_s"],
        "startup_runs": {"no_server": no_server, "with_server": with_server},
    }


def _timed_train(data_dir: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One `cxr train` choosing its own Prefect API: wall seconds, seconds to its flow's start, reused tasks."""
    from cxr.ops.server import running_server

    launched = dt.datetime.now(dt.UTC)
    summary, wall_s, _ = cxr_train(data_dir, api_url=None, **kwargs)
    flow_start = _flow_start(f"{running_server()['url']}/api", summary["flow_run_id"])
    return {
        "wall_s": round(wall_s, 2),
        "to_flow_start_s": round((flow_start - launched).total_seconds(), 2),
        "cached_tasks": summary["cached_tasks"],
    }


def _flow_start(api_url: str, flow_run_id: str) -> dt.datetime:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).start_time
