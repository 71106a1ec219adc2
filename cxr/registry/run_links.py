"""Links between a Prefect flow run and the MLflow run it logs: tags one way, a link the other."""

from __future__ import annotations

from typing import Any

# MLflow run tags naming the Prefect flow run that logged the model.
PREFECT_TAG_PREFIX = "prefect."


def dashboard_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect dashboard, when a dashboard is configured or derivable."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api_url = PREFECT_API_URL.value() or ""
    ui_url = PREFECT_UI_URL.value() or (api_url.removesuffix("/api") if api_url.endswith("/api") else "")
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui_url else None


def _trigger(parameters: dict[str, Any]) -> str:
    config = parameters.get("config")
    trigger = config.get("trigger") if isinstance(config, dict) else getattr(config, "trigger", None)
    return str(trigger or "manual")


def flow_run_tags() -> dict[str, str]:
    """`prefect.*` tags for the current flow run: id, name, flow, deployment, trigger, dashboard URL.

    Empty outside a flow run (a model logged from a script has no flow run to point at).
    """
    from prefect.runtime import deployment, flow_run

    run_id = flow_run.id
    if not run_id:
        return {}
    tags = {
        "flow_run_id": str(run_id),
        "flow_run_name": flow_run.name or "",
        "flow_name": flow_run.flow_name or "",
        "deployment": deployment.name or "none (run directly)",
        "trigger": _trigger(flow_run.parameters or {}),
        "flow_run_url": dashboard_url(str(run_id)) or "",
    }
    return {f"{PREFECT_TAG_PREFIX}{key}": value for key, value in tags.items()}


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI for an HTTP tracking server; None for a local store (no UI runs)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
