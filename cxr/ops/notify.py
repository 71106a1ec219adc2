"""Messages to a webhook when a retraining run fails or crashes and when the champion changes.

Built from Prefect parts, so the Prefect server sends them (a run killed with `kill -9` is still
reported once the server marks it Crashed):

- a Custom Webhook notification block holding the URL (or any notification block the user saved,
  e.g. Slack or e-mail);
- automation `cxr-retrain-failed`: on `prefect.flow-run.Failed`/`Crashed` of the `retrain` flow;
- automation `cxr-champion-changed`: on the `cxr.champion.changed` event, which the registry emits
  whenever the `champion` alias moves (gate promotion, `cxr promote`, `cxr rollback`);
- automation `cxr-data-drift`: on the `cxr.data.drift` event, which a retraining run emits when more of
  its new images than `domain.drift_share` are out of the model's domain (`cxr.evaluation.domain`).

The webhook receives JSON `{"text": "<subject>\\n<body>", "subject": ..., "body": ...}` (`text` is
what Slack-style incoming webhooks show).
"""

from __future__ import annotations

import logging
from typing import Any

from cxr.core.errors import CxrError
from cxr.registry.model_events import CHAMPION_CHANGED_EVENT, DATA_DRIFT_EVENT, MODEL_RESOURCE_PREFIX

RETRAIN_FLOW = "retrain"
WEBHOOK_BLOCK_NAME = "cxr-notify"
WEBHOOK_SECRET = "webhook_url"  # the key of the block's secret field that holds the URL
RUN_FAILED_AUTOMATION = "cxr-retrain-failed"
CHAMPION_AUTOMATION = "cxr-champion-changed"
DRIFT_AUTOMATION = "cxr-data-drift"
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"}

log = logging.getLogger(__name__)


def run_link(ui_url: str) -> str:
    """Jinja for the dashboard page of the automation's flow run."""
    return f"{ui_url}/runs/flow-run/{{{{ flow_run.id }}}}"


def run_failed_message(ui_url: str) -> tuple[str, str]:
    """(subject, body) Jinja templates the server renders for a failed or crashed run."""
    subject = "cxr: retraining run {{ flow_run.name }} {{ flow_run.state.name | lower }}"
    body = (
        "Retraining run {{ flow_run.name }} ended {{ flow_run.state.name }}"
        "{% if flow_run.state.message %}: {{ flow_run.state.message }}{% endif %}\n"
        "Started by: {{ flow_run.tags | join(', ') or 'manual' }}"
        "{% if deployment %} (deployment {{ deployment.name }}){% endif %}\n"
        f"Logs and artifacts: {run_link(ui_url)}\n"
        "The champion model is unchanged."
    )
    return subject, body


def _event_footer(ui_url: str) -> str:
    """The last lines of an event's message: the run that posted it, if any, and the dashboard."""
    return f"{{% if flow_run %}}Run {{{{ flow_run.name }}}}: {run_link(ui_url)}\n{{% endif %}}Dashboard: {ui_url}"


def champion_changed_message(ui_url: str) -> tuple[str, str]:
    """(subject, body) Jinja templates the server renders for a `cxr.champion.changed` event."""
    payload = "event.payload"
    subject = f"cxr: champion is now {{{{ {payload}.model_name }}}} v{{{{ {payload}.version }}}}"
    body = (
        f"{{{{ {payload}.model_name }}}}: champion v{{{{ {payload}.previous or 'none' }}}} -> "
        f"v{{{{ {payload}.version }}}} by {{{{ {payload}.action }}}}: {{{{ {payload}.reason }}}}\n"
        f"Model: {{{{ {payload}.model_uri }}}}\n"
        f"{_event_footer(ui_url)}"
    )
    return subject, body


def data_drift_message(ui_url: str) -> tuple[str, str]:
    """(subject, body) Jinja templates the server renders for a `cxr.data.drift` event."""
    payload = "event.payload"
    subject = f"cxr: {{{{ {payload}.out_of_domain }}}} of {{{{ {payload}.new_images }}}} new images are out of domain"
    body = (
        f"{{{{ {payload}.out_of_domain }}}} of the {{{{ {payload}.new_images }}}} images new in "
        f"{{{{ {payload}.data_dir }}}} ({{{{ {payload}.share_percent }}}} %) are unlike the images "
        f"{{{{ {payload}.model_uri }}}} was trained on (alert above {{{{ {payload}.alert_percent }}}} %).\n"
        "The model still scores them; check the data source before trusting those answers.\n"
        f"{_event_footer(ui_url)}"
    )
    return subject, body


def _ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def masked_url(url: str) -> str:
    """`url` as people may see it: scheme and host only (a webhook's path or query often is its token)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a port number: the message about the URL must not fail on it
        port = ""
    return f"{parts.scheme}://{host}{port}/***"


def save_webhook_block(webhook_url: str) -> Any:  # noqa: ANN401 - prefect BlockDocument id (UUID)
    """Store `webhook_url` as the `cxr-notify` Custom Webhook block (replacing an older one); its id.

    The URL sits in the block's secret field, which the API and the dashboard show masked; the block's plain
    `url` is only the template that names it.
    """
    return webhook_block(webhook_url).save(WEBHOOK_BLOCK_NAME, overwrite=True)


def webhook_block(webhook_url: str) -> Any:  # noqa: ANN401 - CustomWebhookNotificationBlock
    """The Custom Webhook block posting cxr's JSON to `webhook_url`, which only its secret field holds."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if not webhook_url.startswith(("http://", "https://")):
        raise CxrError(f"notification webhook must be an http(s) URL: {masked_url(webhook_url)}")
    return CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK_NAME,
        url="{{" + WEBHOOK_SECRET + "}}",
        secrets={WEBHOOK_SECRET: webhook_url},
        json_data=WEBHOOK_JSON,
    )


def saved_block_id(block_slug: str) -> Any:  # noqa: ANN401 - UUID
    """The id of a saved notification block named `TYPE/NAME` (e.g. `slack-webhook/ops`)."""
    from prefect.blocks.core import Block

    try:
        block = Block.load(block_slug)
    except (ValueError, KeyError) as error:
        raise CxrError(f"no saved Prefect block {block_slug!r}: {error}") from error
    if "notify" not in block.get_block_capabilities():
        raise CxrError(f"Prefect block {block_slug!r} cannot send notifications")
    return block._block_document_id


def configure_notifications(
    *, webhook_url: str | None = None, block_slug: str | None = None, api_url: str | None = None
) -> list[str]:
    """Create (or replace) the automations on the Prefect server at `api_url` (default: settings).

    Exactly one of `webhook_url` (saved as the `cxr-notify` block) and `block_slug` (a notification
    block saved earlier) names where messages go. Returns the automations' names.
    """
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL

    if (webhook_url is None) == (block_slug is None):
        raise CxrError("give either a notification webhook URL or a saved notification block")
    api_url = api_url or PREFECT_API_URL.value()
    if not api_url:
        raise CxrError("notifications need a Prefect server: start one with `cxr dashboard`")
    block_id = save_webhook_block(webhook_url) if webhook_url else saved_block_id(block_slug)
    ui_url = _ui_url(api_url)

    def automation(name: str, description: str, message: tuple[str, str], **trigger: Any) -> Automation:
        subject, body = message
        return Automation(
            name=name,
            description=description,
            trigger=EventTrigger(posture=Posture.Reactive, threshold=1, **trigger),
            actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
        )

    model_events = {"prefect.resource.id": f"{MODEL_RESOURCE_PREFIX}*"}
    automations = [
        automation(
            RUN_FAILED_AUTOMATION,
            "Message when a retraining run fails or crashes.",
            run_failed_message(ui_url),
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": RETRAIN_FLOW},
        ),
        automation(
            CHAMPION_AUTOMATION,
            "Message when the champion model changes.",
            champion_changed_message(ui_url),
            expect={CHAMPION_CHANGED_EVENT},
            match=model_events,
        ),
        automation(
            DRIFT_AUTOMATION,
            "Message when many of a run's new images are out of the model's domain.",
            data_drift_message(ui_url),
            expect={DATA_DRIFT_EVENT},
            match=model_events,
        ),
    ]
    _replace_automations(automations)
    return [automation.name for automation in automations]


def _replace_automations(automations: list[Any]) -> None:
    """Delete automations of the same names, then create these: rerunning `cxr serve` never duplicates."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in automations:
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
    for automation in automations:
        automation.create()
