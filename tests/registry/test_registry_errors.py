"""A registry error is never "no champion": only a missing model or alias is (sqlite and REST stores), every
other answer fails the gate as a transient error, and the sensitivity floor holds for a first model too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cxr.config.params import GateParams
from cxr.core import mlflow_store
from cxr.core.task_policy import is_transient
from cxr.registry import versions
from cxr.registry.registration import DECISION_TAG
from tests.helpers.registering import NAME, register


@pytest.fixture
def answering_server(monkeypatch) -> Iterator[dict]:
    """A tracking server on 127.0.0.1 that answers every request with `reply["status"]` and `reply["body"]`,
    as an MLflow server does (the bodies below are what `mlflow server` 3.x returns)."""
    reply: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = reply["body"].encode()
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one request per call, no backoff
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reply["uri"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield reply
    finally:
        server.shutdown()
        server.server_close()


def test_missing_model_or_alias_means_no_champion_on_a_sqlite_store(tracking_uri):
    assert versions.champion_version(NAME, tracking_uri) is None  # no such registered model
    mlflow_store.client(tracking_uri).create_registered_model(NAME)
    assert versions.champion_version(NAME, tracking_uri) is None  # the model, no alias


@pytest.mark.parametrize(
    ("status", "body", "champion"),
    [
        (
            404,
            '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model with name=m not found"}',
            None,
        ),
        (
            400,
            '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Registered model alias champion not found."}',
            None,
        ),
        (503, "Service Unavailable", "raises"),
        (
            500,
            '{"error_code": "INTERNAL_ERROR", "message": "(sqlite3.OperationalError) database is locked"}',
            "raises",
        ),
        (400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid model name"}', "raises"),
    ],
)
def test_a_rest_store_error_is_not_no_champion(answering_server, status, body, champion):
    answering_server.update(status=status, body=body)
    if champion is None:
        assert versions.champion_version("m", answering_server["uri"]) is None
        return
    with pytest.raises(versions.RegistryUnavailable) as raised:
        versions.champion_version("m", answering_server["uri"])
    assert is_transient(raised.value)  # the task fails and is retried, it does not go on without a champion


def test_the_gate_does_not_promote_when_the_registry_errs(tmp_path, tracking_uri, test_split, monkeypatch):
    """A locked store answering the alias read: the registration fails (transient), nothing is promoted, no
    decision is recorded; once the store answers, the retry decides. On the old code the error read as "no
    champion" and the challenger was promoted as the first model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    def locked(self, name: str, alias: str) -> None:
        raise RestException({"error_code": "INTERNAL_ERROR", "message": "database is locked"})

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "get_model_version_by_alias", locked)
        with pytest.raises(versions.RegistryUnavailable) as raised:
            register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert is_transient(raised.value)
    client = mlflow_store.client(tracking_uri)
    assert client.get_registered_model(NAME).aliases == {}
    assert DECISION_TAG not in client.get_model_version(NAME, "1").tags

    retried = register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert (retried.version, retried.champion, retried.created) == (1, True, False)


def test_the_sensitivity_floor_holds_for_a_first_model(tmp_path, tracking_uri, test_split):
    """Threshold 1.01 flags nothing: sensitivity 0 under a floor of 0.5, and no champion yet."""
    first = register(
        tmp_path, tracking_uri, test_split, gain=30.0, threshold=1.01, gate=GateParams(sensitivity_floor=0.5)
    )
    assert not first.champion and not first.decision["promoted"]
    assert "below the floor" in first.decision["reason"]
    assert versions.champion_version(NAME, tracking_uri) is None
    assert (
        json.loads(mlflow_store.client(tracking_uri).get_model_version(NAME, "1").tags[DECISION_TAG])[
            "promoted"
        ]
        is False
    )
