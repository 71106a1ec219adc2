"""The operator's view against a real Prefect server: `cxr status` and webhook notifications.

A loopback HTTP receiver stands in for the user's webhook; the Prefect server's automations post to it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from cxr import REGISTERED_MODEL_NAME
from cxr.config import RetrainConfig
from tests.servers import prefect_server, wait_for

pytestmark = pytest.mark.slow

TINY = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}
DELIVERY_TIMEOUT_S = 60


@dataclass
class Receiver:
    """JSON bodies POSTed to `url`, with the monotonic time each arrived."""

    url: str
    messages: list[tuple[float, dict]] = field(default_factory=list)

    def wait_for(self, matches: Callable[[dict], bool], *, after: float, what: str) -> tuple[float, dict]:
        def arrived():
            return next(((at, body) for at, body in self.messages if at >= after and matches(body)), None)

        return wait_for(arrived, timeout_s=DELIVERY_TIMEOUT_S, what=what)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    messages: list[tuple[float, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            messages.append((time.monotonic(), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook", messages=messages)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api_url(tmp_path_factory, receiver) -> Iterator[str]:
    """A temporary Prefect server with the notifications configured, and a registry of this module's own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cxr.notify import configure_notifications

    registry = tmp_path_factory.mktemp("registry") / "mlflow.db"
    with (
        prefect_server(tmp_path_factory.mktemp("prefect-server")) as url,
        temporary_settings({PREFECT_API_URL: url}),
        mock.patch.dict(os.environ, {"PREFECT_API_URL": url, "MLFLOW_TRACKING_URI": f"sqlite:///{registry}"}),
    ):
        configure_notifications(webhook_url=receiver.url)
        yield url


def test_a_failed_run_reaches_the_webhook(api_url, receiver, tiny_dataset, tmp_path):
    from cxr.errors import DataError
    from flows.retrain import retrain

    shutil.copytree(tiny_dataset / "train" / "NORMAL", tmp_path / "NORMAL")  # one class only
    with pytest.raises(DataError):
        retrain(RetrainConfig(data_dir=str(tmp_path), **TINY))
    failed_at = time.monotonic()
    [run] = _failed_runs()

    _, message = receiver.wait_for(lambda body: run.name in body["subject"], after=0, what="failure message")
    assert message["subject"] == f"cxr: retraining run {run.name} failed"
    assert f"{api_url.removesuffix('/api')}/runs/flow-run/{run.id}" in message["body"]
    assert "Started by: manual" in message["body"]
    assert message["text"] == f"{message['subject']}\n{message['body']}"
    assert time.monotonic() - failed_at < DELIVERY_TIMEOUT_S


def test_status_and_messages_follow_a_run_a_promotion_and_a_rollback(api_url, receiver, tiny_dataset):
    from cxr.registry import promote, rollback
    from cxr.state import default_tracking_uri
    from cxr.status import gather_status
    from flows.retrain import retrain

    started = time.monotonic()
    first = retrain(RetrainConfig(data_dir=str(tiny_dataset), seed=41, **TINY))
    assert first["champion"] is True
    status = gather_status()
    assert status["dashboard_url"] == api_url.removesuffix("/api")
    champion = status["champion"]
    assert (champion["version"], champion["model_uri"]) == (first["model_version"], first["model_uri"])
    assert champion["metrics"]["auc"] == pytest.approx(first["metrics"]["auc"], abs=1e-6)
    assert champion["reason"] == "first model: no champion yet"
    latest = status["recent_runs"][0]
    assert (latest["state"], latest["trigger"]) == ("Completed", "manual")
    assert latest["url"].endswith(first["flow_run_id"]) and latest["duration_s"] > 0
    assert champion["last_change"]["flow_run"] == latest["name"]
    assert (champion["last_change"]["action"], champion["last_change"]["previous"]) == ("promotion", None)
    _, message = receiver.wait_for(
        lambda body: f"v{first['model_version']}" in body["subject"], after=started, what="first champion"
    )
    assert message["subject"] == f"cxr: champion is now {REGISTERED_MODEL_NAME} v{first['model_version']}"
    assert f"/runs/flow-run/{first['flow_run_id']}" in message["body"]

    second = retrain(RetrainConfig(data_dir=str(tiny_dataset), seed=43, **TINY))
    versions = {first["model_version"], second["model_version"]}
    assert len(versions) == 2
    current = gather_status()["champion"]["version"]
    [other] = versions - {current}

    promoted_at = time.monotonic()
    promote(REGISTERED_MODEL_NAME, other, "validated on site data", default_tracking_uri())
    status = gather_status()
    assert (status["champion"]["version"], status["champion"]["reason"]) == (other, "validated on site data")
    assert status["champion"]["last_change"]["action"] == "promotion"
    assert status["champion"]["last_change"]["flow_run"] is None  # moved by hand, not by a run
    _, message = receiver.wait_for(
        lambda body: "validated on site data" in body["body"], after=promoted_at, what="promotion"
    )
    assert message["subject"].endswith(f" v{other}")
    assert f"champion v{current} -> v{other} by promotion" in message["body"]

    rolled_at = time.monotonic()
    assert rollback(REGISTERED_MODEL_NAME, "regression on ward B", default_tracking_uri()) == current
    status = gather_status()
    assert status["champion"]["version"] == current
    assert status["champion"]["last_change"]["action"] == "rollback"
    assert status["champion"]["last_change"]["reason"] == "regression on ward B"
    assert [run["state"] for run in status["recent_runs"][:2]] == ["Completed", "Completed"]
    _, message = receiver.wait_for(
        lambda body: "regression on ward B" in body["body"], after=rolled_at, what="rollback"
    )
    assert f"champion v{other} -> v{current} by rollback" in message["body"]


def _failed_runs() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    failed = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=failed))
