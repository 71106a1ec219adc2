"""`gate.require_approval`: a challenger that passes waits, paused, for a person; Prefect's API answers."""

from __future__ import annotations

import json
import threading

import pytest

from cxr.config.params import GateParams, RetrainConfig
from tests.helpers.servers import wait_for

TRAIN = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16, "seed": 23}


def _paused_run():  # noqa: ANN202 - prefect FlowRun
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=paused)
    return runs[0] if runs else None


def _retrain_in_thread(config: RetrainConfig) -> tuple[threading.Thread, dict]:
    from flows.retrain import retrain

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(retrain(config)), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.slow
def test_no_answer_means_not_promoted_then_a_resumed_approval_promotes(
    prefect_harness, tiny_dataset, isolated_registry
):
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    from cxr.core.mlflow_store import client
    from cxr.ops.status import gather_status
    from cxr.registry.versions import champion_version
    from flows.retrain import retrain

    gate = {"require_approval": True, "approval_timeout_s": 2}
    unanswered = retrain(RetrainConfig(data_dir=str(tiny_dataset), train=TRAIN, gate=gate))
    assert unanswered["champion"] is False and unanswered["decision"]["promoted"] is False
    assert unanswered["decision"]["approval"]["outcome"] == "no answer within 2 s"
    name, version = unanswered["model_name"], unanswered["model_version"]
    assert champion_version(name, isolated_registry) is None
    assert any("NOT promoted: no answer" in note for note in gather_status(name, isolated_registry)["notes"])

    # The same model again, with time to answer: a person approves it through Prefect's API.
    thread, result = _retrain_in_thread(
        RetrainConfig(data_dir=str(tiny_dataset), train=TRAIN, gate={**gate, "approval_timeout_s": 600})
    )
    paused = wait_for(_paused_run, timeout_s=600, what="the run to pause for a sign-off")
    keyset = keyset_from_paused_state(paused.state)
    description = read_flow_run_input(keyset["description"], flow_run_id=paused.id)
    assert f"v{version}" in description and "auc" in description and "Model card" in description
    resume_flow_run(
        paused.id, run_input={"approve": True, "reviewer": "Dr Reader", "comment": "checked the card"}
    )
    thread.join(timeout=600)
    assert result["champion"] is True and result["model_version"] == version
    answer = json.loads(client(isolated_registry).get_model_version(name, str(version)).tags["approval"])
    assert answer["approved"] is True and answer["reviewer"] == "Dr Reader"
    assert champion_version(name, isolated_registry) == version
    assert not any("NOT promoted" in note for note in gather_status(name, isolated_registry)["notes"])


def _approved(reviewer: str = "Dr Reader") -> dict:
    return {"approved": True, "reviewer": reviewer, "comment": "", "outcome": "approved", "at": "2026-12-07"}


def test_a_recorded_approval_completes_a_promotion_once_and_never_undoes_a_rollback(
    tmp_path, tracking_uri, test_split
):
    """Checked: before, `approve` re-applied a recorded approval whenever the version was not champion, so a
    rerun of the same model (a nightly run on unchanged data) promoted a rolled-back version again with no
    person asked; and that path returned the decision without `approval` and with `promoted` false."""
    from cxr.core.mlflow_store import client
    from cxr.registry.approval import APPROVAL_TAG
    from cxr.registry.versions import champion_version, rollback
    from tasks.approve import approve
    from tests.helpers.registering import NAME, register, trained

    gate = GateParams(require_approval=True)
    register(tmp_path, tracking_uri, test_split, gain=0.5)
    waiting = register(tmp_path, tracking_uri, test_split, gain=30.0, gate=gate)
    assert waiting.decision["awaiting_approval"] and champion_version(NAME, tracking_uri) == 1
    # The answer was tagged, then the run died before the alias moved: the retry completes the promotion.
    client(tracking_uri).set_model_version_tag(
        NAME, str(waiting.version), APPROVAL_TAG, json.dumps(_approved())
    )
    train, _ = trained(tmp_path, 30.0)
    completed = approve.fn(train, waiting, gate)
    assert champion_version(NAME, tracking_uri) == waiting.version
    assert completed.decision["promoted"] is True and completed.decision["approval"] == _approved()

    rollback(NAME, "worse in the clinic", tracking_uri)
    rerun = approve.fn(train, waiting, gate)
    assert champion_version(NAME, tracking_uri) == 1
    assert set(rerun.decision) == set(completed.decision)
