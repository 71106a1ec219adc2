"""Prefect events about a registered model: the champion moved, its domain score flagged drift."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

CHAMPION_CHANGED_EVENT = "cxr.champion.changed"
DATA_DRIFT_EVENT = "cxr.data.drift"
MODEL_RESOURCE_PREFIX = "cxr.model."


def announce_champion_change(change: dict[str, Any]) -> None:
    """Post `cxr.champion.changed` with `change` as payload to the Prefect server, if one is configured.

    Sent synchronously (a short-lived `cxr promote` must not exit before it is delivered). Inside a
    flow run the event names that run, so the message links to it. Without a configured server
    nothing is sent: no automation could be listening. A failure to send is logged, never raised:
    the champion has already moved.
    """
    post_model_event(CHAMPION_CHANGED_EVENT, change["model_name"], change)


def post_model_event(event_name: str, model_name: str, payload: dict[str, Any]) -> None:
    """Post event `event_name` about registered model `model_name` (see `announce_champion_change`)."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    related = []
    if flow_run.id:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.name,
            }
        )
    event = Event(
        event=event_name,
        resource={
            "prefect.resource.id": f"{MODEL_RESOURCE_PREFIX}{model_name}",
            "prefect.resource.name": model_name,
        },
        related=related,
        payload=payload,
    )
    try:
        with get_client(sync_client=True) as client:
            client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()
    except Exception as error:  # any transport or HTTP error: what it reports stands
        log.warning("could not post %s to %s: %s", event_name, PREFECT_API_URL.value(), error)
