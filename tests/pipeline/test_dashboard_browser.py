"""`cxr dashboard` end to end: start the Prefect server, record a retrain run, see it in a real browser."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest

from cxr.config.params import RetrainConfig
from cxr.ops.server import api_url_if_running, ensure_dashboard, free_port, pid_file, stop_dashboard
from tests.helpers.servers import REPO

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output"


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]


def browse(url: str, user_data_dir: Path, *, screenshot: Path | None = None) -> str:
    """The visible text of `url` once the dashboard's JavaScript has rendered it (headless Chromium)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ]
    if screenshot is not None:
        subprocess.run(
            [str(CHROMIUM), *flags, f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(text))


@pytest.fixture(scope="module")
def dashboard():
    """`ensure_dashboard` on a free port (state in the test session's CXR_HOME); `stop_dashboard` ends it."""
    port = free_port()
    url = ensure_dashboard(port=port)
    yield port, url
    assert stop_dashboard() is True
    assert api_url_if_running(port) is None
    assert not pid_file().exists()
    assert stop_dashboard() is False  # nothing left to stop


def test_ensure_dashboard_reuses_the_running_server(dashboard):
    port, url = dashboard
    assert url == f"http://127.0.0.1:{port}"
    assert api_url_if_running(port) == f"{url}/api"
    started = json.loads(pid_file().read_text())
    assert ensure_dashboard(port=port) == url
    assert json.loads(pid_file().read_text()) == started  # no second server


def test_a_retrain_run_and_its_metrics_show_in_the_dashboard(dashboard, tiny_dataset, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.retrain import retrain

    port, url = dashboard
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    train = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}
    config = RetrainConfig(data_dir=str(tiny_dataset), train=train)
    with temporary_settings({PREFECT_API_URL: api_url_if_running(port)}):
        result = retrain(config)
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(result["flow_run_id"])
            [metrics] = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["metrics"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                )
            )

    SCREENSHOTS.mkdir(exist_ok=True)
    run_page = browse(
        f"{url}/runs/flow-run/{run.id}",
        tmp_path / "chromium-run",
        screenshot=SCREENSHOTS / "dashboard-run.png",
    )
    assert run.name in run_page
    assert "Completed" in run_page

    artifact_page = browse(
        f"{url}/artifacts/artifact/{metrics.id}",
        tmp_path / "chromium-artifact",
        screenshot=SCREENSHOTS / "dashboard.png",
    )
    assert run.name in artifact_page  # the artifact links back to its run
    for row in json.loads(metrics.data):
        assert f"{row['metric']} {row['value']}" in artifact_page
