"""The operator's view through the CLI against a real Prefect server: `cxr serve --notify-webhook`,
`cxr status --json`, quiet output and words that match what a run did.

A loopback HTTP receiver stands in for the user's webhook; the Prefect server's automations post to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from cli.main import main
from cxr import REGISTERED_MODEL_NAME
from cxr.core.native_logs import LOG_LEVEL_ENV, NATIVE_LOG_LINE
from tests.helpers.servers import REPO, prefect_server, repo_process, wait_for

pytestmark = pytest.mark.slow

TINY = ["--model", "seed", "--image-size", "32", "--epochs", "1", "--batch-size", "16"]
DELIVERY_TIMEOUT_S = 60
CRON = "0 3 * * *"


@dataclass
class Receiver:
    """JSON bodies POSTed to `url`, with the monotonic time each arrived."""

    url: str
    messages: list[tuple[float, dict]] = field(default_factory=list)

    def wait_for(self, matches: Callable[[dict], bool], *, after: float, what: str) -> dict:
        def arrived():
            return next((body for at, body in self.messages if at >= after and matches(body)), None)

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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook", messages=messages)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api_url(tmp_path_factory) -> Iterator[str]:
    """A temporary Prefect server (scheduling every 2 s) and a registry of this module's own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    registry = tmp_path_factory.mktemp("registry") / "mlflow.db"
    with (
        mock.patch.dict(os.environ, {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}),
        prefect_server(tmp_path_factory.mktemp("prefect-server")) as url,
        temporary_settings({PREFECT_API_URL: url}),
        mock.patch.dict(os.environ, {"PREFECT_API_URL": url, "MLFLOW_TRACKING_URI": f"sqlite:///{registry}"}),
    ):
        yield url


@pytest.fixture(scope="module")
def served(api_url, receiver, tiny_dataset, tmp_path_factory) -> Iterator[None]:
    """`cxr serve --notify-webhook` in a subprocess, until its deployments and automations are registered."""
    from prefect.client.orchestration import get_client

    from cxr.ops.notify import CHAMPION_AUTOMATION, DRIFT_AUTOMATION, RUN_FAILED_AUTOMATION

    home = tmp_path_factory.mktemp("serve-home")
    command = ["serve", "--data", str(tiny_dataset), "--cron", CRON, "--notify-webhook", receiver.url]
    log_path = home / "serve.log"
    with (
        repo_process(
            ["-m", "cli.main", *command], api_url, home, log_path, PREFECT_RUNNER_POLL_FREQUENCY="2"
        ) as process,
        get_client(sync_client=True) as client,
    ):

        def ready() -> bool:
            assert process.poll() is None, log_path.read_text()
            automations = [
                client.read_automations_by_name(name)
                for name in (RUN_FAILED_AUTOMATION, CHAMPION_AUTOMATION, DRIFT_AUTOMATION)
            ]
            return all(automations) and len(client.read_deployments()) == 2

        wait_for(ready, timeout_s=180, what="`cxr serve` to register deployments and notifications")
        yield


def _status(capsys) -> dict:
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_status_shows_serving_and_the_next_nightly_run(served, api_url, capsys):
    status = wait_for(
        lambda: (found := _status(capsys))["next_scheduled"] and found["serving"]["up"] and found,
        timeout_s=60,
        what="the nightly run to be scheduled and polled",
    )
    assert {"champion", "recent_runs", "next_scheduled", "dashboard_url", "serving"} <= status.keys()
    assert status["dashboard_url"] == api_url.removesuffix("/api")
    assert status["next_scheduled"]["deployment"] == "nightly"
    assert status["next_scheduled"]["at"] > datetime.now(UTC).isoformat()
    assert status["next_scheduled"]["at"][11:16] == "03:00"  # the cron, in UTC
    assert {row["deployment"] for row in status["serving"]["deployments"]} == {"nightly", "on-new-data"}

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "serving    yes" in text and f"dashboard  {status['dashboard_url']}" in text


def test_a_failed_run_reaches_the_webhook(served, api_url, receiver, tiny_dataset, tmp_path, capsys):
    shutil.copytree(tiny_dataset / "train" / "NORMAL", tmp_path / "NORMAL")  # one class only
    started = time.monotonic()
    assert main(["train", "--data", str(tmp_path), *TINY]) == 2
    failed = _status(capsys)["recent_runs"][0]
    assert failed["state"] == "Failed" and "pneumonia" in failed["message"].lower()

    message = receiver.wait_for(lambda body: failed["name"] in body["subject"], after=started, what="failure")
    assert message["subject"] == f"cxr: retraining run {failed['name']} failed"
    assert failed["url"] in message["body"]
    assert "Started by: manual" in message["body"]
    assert message["text"] == f"{message['subject']}\n{message['body']}"


def test_a_run_is_quiet_and_its_rerun_says_what_it_reused(served, receiver, tiny_dataset, capsys):
    command = ["train", "--data", str(tiny_dataset), *TINY, "--seed", "41"]
    started = time.monotonic()
    env = {
        key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", LOG_LEVEL_ENV)
    }
    first = subprocess.run(
        [sys.executable, "-m", "cli.main", *command],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    assert not [line for line in first.stderr.splitlines() if NATIVE_LOG_LINE.match(line.encode())]
    assert "Finished in state Completed()" in first.stderr  # Prefect's run logs stay
    assert "trained seed on " in first.stdout and "reused the" not in first.stdout

    capsys.readouterr()
    assert main(command) == 0
    rerun = capsys.readouterr().out
    assert "trained seed on" not in rerun
    assert "reused the seed model trained 20" in rerun and "nothing was trained" in rerun
    assert "(registered by an earlier run)" in rerun

    status = _status(capsys)
    champion = status["champion"]
    assert champion["version"] == 1 and champion["reason"] == "first model: no champion yet"
    first_run, rerun_row = status["recent_runs"][1], status["recent_runs"][0]
    assert (rerun_row["state"], rerun_row["trigger"]) == ("Completed", "manual")
    assert champion["last_change"]["flow_run"] == first_run["name"]
    assert _progress_artifacts(first_run["url"].rsplit("/", 1)[-1]) == {"training-progress": 100.0}
    message = receiver.wait_for(lambda body: " v1" in body["subject"], after=started, what="first champion")
    assert message["subject"] == f"cxr: champion is now {REGISTERED_MODEL_NAME} v1"
    assert first_run["url"] in message["body"]


def test_promotion_and_rollback_show_in_status_and_reach_the_webhook(served, receiver, tiny_dataset, capsys):
    assert main(["train", "--data", str(tiny_dataset), *TINY, "--seed", "43", "--json"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(second["reused"]) == set(second["cached_tasks"]) >= {"ingest-plan", "ingest-assemble"}
    current = _status(capsys)["champion"]["version"]
    [other] = {1, second["model_version"]} - {current}

    promoted_at = time.monotonic()
    assert main(["promote", str(other), "--reason", "validated on site data"]) == 0
    champion = _status(capsys)["champion"]
    assert (champion["version"], champion["reason"]) == (other, "validated on site data")
    assert (champion["last_change"]["action"], champion["last_change"]["flow_run"]) == ("promotion", None)
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert f"champion   models:/{REGISTERED_MODEL_NAME}/{other} (seed): auc " in text
    assert "by promotion: validated on site data" in text
    message = receiver.wait_for(lambda body: "site data" in body["body"], after=promoted_at, what="promotion")
    assert message["subject"] == f"cxr: champion is now {REGISTERED_MODEL_NAME} v{other}"
    assert f"champion v{current} -> v{other} by promotion: validated on site data" in message["body"]

    rolled_at = time.monotonic()
    assert main(["rollback", "--reason", "regression on ward B"]) == 0
    champion = _status(capsys)["champion"]
    assert champion["version"] == current
    assert (champion["last_change"]["action"], champion["last_change"]["reason"]) == (
        "rollback",
        "regression on ward B",
    )
    message = receiver.wait_for(lambda body: "ward B" in body["body"], after=rolled_at, what="rollback")
    assert f"champion v{other} -> v{current} by rollback: regression on ward B" in message["body"]


def _progress_artifacts(flow_run_id: str) -> dict[str, float]:
    """Key -> last value of the progress artifacts of a flow run and its tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    return {artifact.key: artifact.data for artifact in artifacts}
