"""Promotion is all-or-nothing: the alias moves first and is recorded after; a failure between the steps
(a planned fault, cxr/core/faults.py) leaves the old champion whole, and a retry promotes whole. Every alias
move (gate, `cxr promote`, `cxr rollback`) takes the one registry lock."""

from __future__ import annotations

import json
import threading

import pytest

from cxr.config.params import GateParams
from cxr.core import faults, mlflow_store
from cxr.core.locking import registry_lock
from cxr.registry import versions
from cxr.registry.registration import DECISION_TAG
from tests.helpers.registering import NAME, register

REFUSE_ALL = GateParams(margin=1.0)  # no AUC beats the champion's by 1
RECORDS = ("promotion_reason", "promoted_at", DECISION_TAG)


@pytest.fixture(autouse=True)
def no_faults(monkeypatch):
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    faults.reset()


def registry_state(tracking_uri: str) -> dict:
    """What says who is champion: the alias, the history, the last change and each version's records."""
    client = mlflow_store.client(tracking_uri)
    model = client.get_registered_model(NAME)
    change = json.loads(model.tags.get(versions.CHANGE_TAG, "null"))
    return {
        "alias": versions.champion_version(NAME, tracking_uri),
        "history": [entry["version"] for entry in json.loads(model.tags.get(versions.HISTORY_TAG, "[]"))],
        "change": change and (change["version"], change["previous"]),
        "records": {
            int(version.version): sorted(key for key in RECORDS if key in version.tags)
            for version in client.search_model_versions(f"name = '{NAME}'")
        },
    }


PROMOTED_V2 = {
    "alias": 2,
    "history": [1, 2],
    "change": (2, 1),
    "records": {1: sorted(RECORDS), 2: sorted(RECORDS)},
}


@pytest.mark.parametrize(
    "point",
    [
        "registry_alias",  # the alias move itself fails
        "registry_record_champion_history",  # the alias moved, nothing recorded yet
        "registry_record_champion_change",
        "registry_record_promoted_at",
        "registry_record_promotion_decision",  # all but the decision recorded
    ],
)
def test_a_failure_between_the_steps_leaves_one_whole_state_and_a_retry_completes_it(
    tmp_path, tracking_uri, test_split, monkeypatch, point
):
    """On the old code the decision was tagged first and the history before the alias: a failed move left
    v2 with a "promoted" decision and a history naming it, the alias on v1, and the retry reused the
    decision and never moved the alias."""
    register(tmp_path, tracking_uri, test_split, gain=0.5)
    before = registry_state(tracking_uri)
    monkeypatch.setenv(faults.ENV_VAR, f"{point}:1")
    with pytest.raises(OSError, match=f"injected fault at {point}"):
        register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert faults.hits(point) == 1
    assert registry_state(tracking_uri) == {**before, "records": {**before["records"], 2: []}}

    retried = register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert (retried.version, retried.champion, retried.decision["promoted"]) == (2, True, True)
    assert registry_state(tracking_uri) == PROMOTED_V2


def test_a_promotion_whose_put_back_failed_too_is_completed_by_the_retry(
    tmp_path, tracking_uri, test_split, monkeypatch
):
    """Recording fails and so does putting the alias back (the registry went away, or kill -9 between the
    steps): the alias names v2 with nothing recorded. The retry decides again against v1 and records it."""
    register(tmp_path, tracking_uri, test_split, gain=0.5)
    monkeypatch.setenv(faults.ENV_VAR, "registry_record_champion_history:1")

    def unreachable(*args: object) -> None:
        raise ConnectionError("registry unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(versions, "put_alias_back", unreachable)
        with pytest.raises(OSError):
            register(tmp_path, tracking_uri, test_split, gain=30.0)
    half = registry_state(tracking_uri)
    assert (half["alias"], half["history"], half["records"][2]) == (2, [1], [])

    retried = register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert retried.decision["champion_version"] == 1 and retried.decision["promoted"]
    assert registry_state(tracking_uri) == PROMOTED_V2


def test_a_promoted_decision_without_its_alias_is_completed_not_skipped(tmp_path, tracking_uri, test_split):
    """The state the old order left when the alias move failed: v2's decision "promoted", its promotion
    recorded and on top of the history, the alias still on v1. Registering v2 again moves the alias."""
    register(tmp_path, tracking_uri, test_split, gain=0.5)
    client = mlflow_store.client(tracking_uri)
    refused = register(tmp_path, tracking_uri, test_split, gain=30.0, gate=REFUSE_ALL)
    decision = {**refused.decision, "promoted": True, "reason": "better"}
    decision.pop("alias_moved", None)
    client.set_model_version_tag(NAME, "2", DECISION_TAG, json.dumps(decision))
    client.set_model_version_tag(NAME, "2", "promoted_at", "2026-12-07T00:00:00+00:00")
    history = versions.champion_history(NAME, tracking_uri) + [{"version": 2, "reason": "better", "at": "x"}]
    client.set_registered_model_tag(NAME, versions.HISTORY_TAG, json.dumps(history))

    again = register(tmp_path, tracking_uri, test_split, gain=30.0, gate=REFUSE_ALL)
    assert (again.version, again.champion) == (2, True)
    assert registry_state(tracking_uri)["history"] == [1, 2]

    # Completed once: after a rollback the same recorded decision leaves the alias where it was put.
    versions.rollback(NAME, "canary failed", tracking_uri)
    third = register(tmp_path, tracking_uri, test_split, gain=30.0, gate=REFUSE_ALL)
    assert (third.version, third.champion, versions.champion_version(NAME, tracking_uri)) == (2, False, 1)


@pytest.mark.parametrize("move", ["promote", "rollback"])
def test_promote_and_rollback_wait_for_the_registry_lock(tmp_path, tracking_uri, test_split, move):
    """While a gate holds the registry lock, `cxr promote` / `cxr rollback` (these functions) wait for it.
    On the old code they moved the alias at once."""
    for gain in (0.5, 30.0):
        register(tmp_path, tracking_uri, test_split, gain=gain)
    assert versions.champion_version(NAME, tracking_uri) == 2
    call = {
        "promote": lambda: versions.promote(NAME, 1, "by hand", tracking_uri),
        "rollback": lambda: versions.rollback(NAME, "by hand", tracking_uri),
    }[move]
    with registry_lock(tracking_uri, NAME):
        mover = threading.Thread(target=call)
        mover.start()
        mover.join(timeout=2.0)
        assert mover.is_alive() and versions.champion_version(NAME, tracking_uri) == 2
    mover.join(timeout=60)
    assert not mover.is_alive() and versions.champion_version(NAME, tracking_uri) == 1


@pytest.mark.parametrize("gate", [None, REFUSE_ALL], ids=["promoted", "refused"])
def test_an_alias_left_on_an_undecided_version_is_decided_against_the_champion_before_it(
    tmp_path, tracking_uri, test_split, monkeypatch, gate
):
    """What a kill -9 right after the alias move leaves: the alias on v2, nothing recorded. The next attempt
    decides against v1 (not v2 against itself) and ends whole: promoted and recorded, or v1 champion again."""
    register(tmp_path, tracking_uri, test_split, gain=0.5)
    monkeypatch.setenv(faults.ENV_VAR, "registry_alias:1")
    with pytest.raises(OSError):
        register(tmp_path, tracking_uri, test_split, gain=30.0)  # v2 registered, undecided
    before = registry_state(tracking_uri)
    mlflow_store.client(tracking_uri).set_registered_model_alias(NAME, versions.CHAMPION_ALIAS, "2")

    again = register(tmp_path, tracking_uri, test_split, gain=30.0, gate=gate)
    assert again.decision["champion_version"] == 1
    if gate is None:
        assert registry_state(tracking_uri) == PROMOTED_V2
    else:
        assert not again.decision["promoted"]
        assert registry_state(tracking_uri) == {**before, "records": {**before["records"], 2: [DECISION_TAG]}}
