"""Where things stand, for `cxr status`: champion, recent runs, next nightly run, what is up, inbox backlog.

The champion comes from the MLflow registry; runs, schedules and served deployments from the Prefect
server in use ($PREFECT_API_URL or the state folder's local server). Without a server answering, the
Prefect parts are null and `notes` says why: `cxr status` reads, it never starts a server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cxr import REGISTERED_MODEL_NAME
from cxr.core.state_folder import cxr_home
from cxr.ops.notify import RETRAIN_FLOW
from cxr.ops.prefect_api import choose_prefect_api
from cxr.ops.server import is_healthy, local_server_status

RECENT_RUNS = 5
TRIGGERS = ("nightly", "new-data", "manual")
# A serving process polls its deployments every ~10 s; older than this, nobody is serving them.
SERVING_POLL_WINDOW = timedelta(seconds=90)


def prefect_api_url() -> str | None:
    """The API of the Prefect server runs are recorded in, when it answers."""
    api_url = choose_prefect_api(start=False)
    return api_url if api_url and is_healthy(api_url) else None


def champion(model_name: str, tracking_uri: str) -> dict[str, Any] | None:
    """The champion version with its test metrics, why it was promoted, the last move of the alias
    (how, why, when and by which flow run) and the MLflow run that registered it."""
    from cxr.core.mlflow_store import client, store_exists
    from cxr.registry.versions import (
        champion_history,
        champion_version,
        last_champion_change,
        version_metrics,
    )

    if not store_exists(tracking_uri):  # nothing registered yet; reading would create an empty store
        return None
    version = champion_version(model_name, tracking_uri)
    if version is None:
        return None
    mlflow_client = client(tracking_uri)
    model_version = mlflow_client.get_model_version(model_name, str(version))
    entry = next(
        (item for item in reversed(champion_history(model_name, tracking_uri)) if item["version"] == version),
        {},
    )
    run_name = mlflow_client.get_run(model_version.run_id).info.run_name if model_version.run_id else None
    change = last_champion_change(model_name, tracking_uri)
    return {
        "model_name": model_name,
        "version": version,
        "model_uri": f"models:/{model_name}/{version}",
        "architecture": model_version.tags.get("model_name"),
        "metrics": version_metrics(model_version.tags),
        "promoted_at": entry.get("at"),
        "reason": entry.get("reason"),
        "last_change": change if change and change["version"] == version else None,
        "registered_at": _iso(datetime.fromtimestamp(model_version.creation_timestamp / 1000, UTC)),
        "mlflow_run": {"id": model_version.run_id, "name": run_name},
        "data_digest": model_version.tags.get("data_digest"),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def _trigger(run: Any) -> str:  # noqa: ANN401 - prefect FlowRun
    """What started a run: its trigger tag, else its `config.trigger` parameter."""
    for tag in run.tags:
        if tag in TRIGGERS:
            return tag
    config = run.parameters.get("config") or {}
    return config.get("trigger", "manual") if isinstance(config, dict) else "manual"


def _duration_s(run: Any, now: datetime) -> float | None:  # noqa: ANN401 - prefect FlowRun
    if run.start_time is None:
        return None
    end = run.end_time or now
    return round((end - run.start_time).total_seconds(), 1)


def _run_row(run: Any, ui_url: str, now: datetime) -> dict[str, Any]:  # noqa: ANN401
    return {
        "name": run.name,
        "state": run.state.name if run.state else None,
        "trigger": _trigger(run),
        "started": _iso(run.start_time),
        "duration_s": _duration_s(run, now),
        "message": run.state.message if run.state and not run.state.is_completed() else None,
        "url": f"{ui_url}/runs/flow-run/{run.id}",
    }


def prefect_status(client: Any, ui_url: str, limit: int = RECENT_RUNS) -> dict[str, Any]:  # noqa: ANN401
    """`recent_runs`, `next_scheduled` and `serving` from a Prefect client."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.now(UTC)
    retrain_flow = FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW]))
    started = client.read_flow_runs(
        flow_filter=retrain_flow,
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    scheduled = client.read_flow_runs(
        flow_filter=retrain_flow,
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=1,
    )
    deployments = client.read_deployments(flow_filter=retrain_flow)
    names = {deployment.id: deployment.name for deployment in deployments}
    next_run = None
    if scheduled:
        run = scheduled[0]
        next_run = {
            "name": run.name,
            "deployment": names.get(run.deployment_id),
            "at": _iso(run.expected_start_time),
        }
    served = [
        {
            "deployment": deployment.name,
            "last_polled": _iso(deployment.last_polled),
            "paused": deployment.paused,
            "up": deployment.last_polled is not None and now - deployment.last_polled < SERVING_POLL_WINDOW,
        }
        for deployment in deployments
    ]
    return {
        "recent_runs": [_run_row(run, ui_url, now) for run in started],
        "next_scheduled": next_run,
        "serving": {"up": any(row["up"] for row in served), "deployments": served},
    }


def watched_inboxes() -> list[dict[str, Any]]:
    """Each inbox `cxr watch` has announced from, with the files not announced yet."""
    from cxr.ops.watch import load_announced, new_or_changed, snapshot

    rows = []
    for state_file in sorted((cxr_home() / "watch").glob("*.json")):
        inbox = Path(json.loads(state_file.read_text())["inbox"])
        exists = inbox.is_dir()
        rows.append(
            {
                "path": str(inbox),
                "exists": exists,
                "waiting_files": new_or_changed(snapshot(inbox), load_announced(inbox)) if exists else None,
            }
        )
    return rows


def gather_status(model_name: str = REGISTERED_MODEL_NAME, tracking_uri: str | None = None) -> dict[str, Any]:
    """Everything `cxr status` shows, as one JSON-ready dict."""
    from cxr.core.mlflow_store import store_exists
    from cxr.core.state_folder import default_tracking_uri

    notes: list[str] = []
    store = tracking_uri or default_tracking_uri()
    current = champion(model_name, store)
    if current is None:
        notes.append(f"no champion yet: `cxr train` registers the first model of {model_name}")
    if store_exists(store):  # reading a missing sqlite store would create an empty one
        from cxr.registry.approval import sign_off_note

        notes += filter(None, [sign_off_note(model_name, store)])
    status: dict[str, Any] = {
        "champion": current,
        "recent_runs": None,
        "next_scheduled": None,
        "dashboard_url": None,
        "local_server": local_server_status(),
        "serving": None,
        "inboxes": watched_inboxes(),
        "notes": notes,
    }
    api_url = prefect_api_url()
    if api_url is None:
        notes.append(
            "no Prefect server is answering: the next `cxr train` (or `cxr dashboard`) starts the state "
            "folder's local server, which keeps the runs"
        )
        return status
    ui_url = api_url.rstrip("/").removesuffix("/api")
    status["dashboard_url"] = ui_url
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        status.update(prefect_status(client, ui_url))
    return status
