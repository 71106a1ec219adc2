"""A person signs off a new champion (`gate.require_approval`): the run pauses in the Prefect dashboard.

The register stage leaves a challenger that passed the gate unpromoted (`awaiting_approval` in its
decision). This step pauses the flow run with a form (approve or reject, name, comment) whose description
holds the evidence: the gate's numbers on the test split and the external sets, the referral band's
coverage where the model has one, and a link to the model card. The answer, or the lack of one before
`gate.approval_timeout_s`, is tagged on the MLflow version as `approval`; only an approval moves the alias.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field

from cxr.core.mlflow_store import client
from cxr.registry.mlflow_run import CARD_FILE
from cxr.registry.registration import RegistrationResult, decision_markdown
from cxr.registry.versions import now_iso, promote, was_champion

APPROVAL_TAG = "approval"
POLL_S = 5


class SignOff(RunInput):
    """The reviewer's answer: the form Prefect's dashboard shows on the paused run."""

    approve: bool = Field(False, description="Make this version the champion")
    reviewer: str = Field("", description="Your name")
    comment: str = Field("", description="Why (kept on the model version)")


def evidence(registration: RegistrationResult, coverage: dict[str, Any] | None) -> str:
    """The form's description: what the gate saw, the referral coverage, and where the card is."""
    covered = ""
    if coverage:
        shown = ", ".join(f"{key} {value}" for key, value in coverage.items())
        covered = f"\n\nReferral band (the model answers alone outside it): {shown}.\n"
    card = f"{registration.run_url}/artifacts/{CARD_FILE}" if registration.run_url else CARD_FILE
    return (
        f"{decision_markdown(registration)}{covered}\n\nModel card: {card}\n\n"
        "Approve to make this version the champion; reject (or no answer in time) leaves the champion as it is."
    )


def request_sign_off(
    registration: RegistrationResult, timeout_s: float, coverage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pause the flow run for a reviewer's answer; promote on approval. Returns the recorded answer."""
    form = SignOff.with_initial_data(description=evidence(registration, coverage))
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=int(timeout_s), poll_interval=min(POLL_S, max(1, int(timeout_s)))
        )
    except FlowPauseTimeout:
        answer = None
        _resume_after_timeout()
    if answer is None:
        record = {
            "approved": False,
            "reviewer": None,
            "comment": "",
            "outcome": f"no answer within {timeout_s:g} s",
        }
    else:
        record = {
            "approved": bool(answer.approve),
            "reviewer": answer.reviewer or "unnamed",
            "comment": answer.comment,
            "outcome": "approved" if answer.approve else "rejected",
        }
    record["at"] = now_iso()
    return apply_answer(registration, record)


def apply_answer(registration: RegistrationResult, record: dict[str, Any]) -> dict[str, Any]:
    """Tag the answer on the version and, for an approval, move the alias there (both idempotent).

    An approval moves the alias once: a version that was champion and left (rolled back, or replaced by a
    later champion) stays where it is when the same answer is applied again (a rerun of the same model).
    """
    name, version, store = registration.model_name, registration.version, registration.tracking_uri
    client(store).set_model_version_tag(name, str(version), APPROVAL_TAG, json.dumps(record))
    if record["approved"] and not was_champion(name, version, store):
        comment = f": {record['comment']}" if record["comment"] else ""
        promote(name, version, f"signed off by {record['reviewer']}{comment}", store)
    return record


def _resume_after_timeout() -> None:
    """Put the run back to Running: it goes on to finish (not promoted) instead of hanging Paused."""
    context = FlowRunContext.get()
    with get_client(sync_client=True) as prefect:
        prefect.set_flow_run_state(context.flow_run.id, Running(), force=True)


def recorded_answer(registration: RegistrationResult) -> dict[str, Any] | None:
    """The sign-off already tagged on the version (an earlier run of the same model), if any."""
    tags = (
        client(registration.tracking_uri)
        .get_model_version(registration.model_name, str(registration.version))
        .tags
    )
    return json.loads(tags[APPROVAL_TAG]) if APPROVAL_TAG in tags else None


def sign_off_note(name: str, tracking_uri: str) -> str | None:
    """`cxr status`'s line when the newest version of `name` was not signed off (no answer, or rejected)."""
    versions = client(tracking_uri).search_model_versions(f"name = '{name}'")
    if not versions:
        return None
    newest = max(versions, key=lambda version: int(version.version))
    recorded = newest.tags.get(APPROVAL_TAG)
    answer = json.loads(recorded) if recorded else {"approved": True}
    if answer["approved"]:
        return None
    said = f" ({answer['comment']})" if answer.get("comment") else ""
    return f"{name} v{newest.version} passed the gate but was NOT promoted: {answer['outcome']}{said}"
