"""Stage `approve`: a person signs off a challenger that passed the gate (`cxr.registry.approval`), when
`gate.require_approval` asks for it; otherwise it returns the registration as it is."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from cxr.config.params import GateParams
from cxr.core.task_policy import retry_transient
from cxr.model.referral import referral_band
from cxr.model.training import TrainResult
from cxr.registry.approval import apply_answer, recorded_answer, request_sign_off
from cxr.registry.registration import RegistrationResult

# Longer than any sign-off wait: the pause itself ends at `gate.approval_timeout_s`, and the run's limit
# (`timeouts.flow_s`) cuts this task's like every other's.
APPROVE_TIMEOUT_S = 7 * 24 * 3600


# NO_CACHE: an answer is a person's, given once per run. A retry after a transient registry error finds an
# approval already tagged on the version and applies it without asking again.
@task(
    name="approve",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_transient,
    timeout_seconds=APPROVE_TIMEOUT_S,
)
def approve(trained: TrainResult, registration: RegistrationResult, gate: GateParams) -> RegistrationResult:
    """Wait for a reviewer's sign-off on a challenger the gate passed; the registration with the answer."""
    if not registration.decision.get("awaiting_approval"):
        return registration
    earlier = recorded_answer(registration)
    if earlier and earlier["approved"]:  # signed off already (a retry, or the same model again)
        answer = apply_answer(registration, earlier)
    else:
        answer = _ask(trained, registration, gate)
    decision = {**registration.decision, "approval": answer, "promoted": answer["approved"]}
    return registration.model_copy(update={"decision": decision, "artifacts": []})


def _ask(trained: TrainResult, registration: RegistrationResult, gate: GateParams) -> dict:
    """Pause for a reviewer's answer (`request_sign_off`), with the referral band in the evidence."""
    band = referral_band(json.loads(Path(trained.metadata_path).read_text()))
    logger = get_run_logger()
    logger.info(
        "%s v%d passed the gate and waits for a reviewer's sign-off in the dashboard (up to %g s)",
        registration.model_name,
        registration.version,
        gate.approval_timeout_s,
    )
    answer = request_sign_off(registration, gate.approval_timeout_s, band.model_dump() if band else None)
    logger.info(
        "%s v%d %s: %s",
        registration.model_name,
        registration.version,
        "promoted to champion" if answer["approved"] else "NOT promoted",
        answer["outcome"] + (f" by {answer['reviewer']}" if answer["reviewer"] else ""),
    )
    return answer
