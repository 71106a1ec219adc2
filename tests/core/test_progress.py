"""Progress: a terminal bar only on a terminal, log lines above it, and a Prefect progress artifact."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

from cxr.core.progress import enable_terminal_progress, stage_progress, terminal_progress_enabled
from tests.helpers.servers import REPO

# Counts 30 files while a Prefect logger writes; runs in a pseudo-terminal.
BAR_SCRIPT = """
import logging, time
from cxr.core.state_folder import configure_environment
configure_environment()
from prefect.logging.configuration import setup_logging
setup_logging()
from cxr.core.progress import enable_terminal_progress, stage_progress
enable_terminal_progress(True)
with stage_progress("ingest: check files", 30, "files") as progress:
    for index in range(30):
        time.sleep(0.02)
        progress.advance()
        if index == 10:
            logging.getLogger("prefect.cxr").info("a log line while the bar is shown")
print("finished")
"""


def test_no_bar_when_stdout_is_not_a_terminal(capsys):
    enable_terminal_progress(True)  # pytest captures stdout: not a terminal
    assert not terminal_progress_enabled()
    with stage_progress("ingest", 5, "files") as progress:
        progress.advance(5)
    assert capsys.readouterr().out == ""


def test_bar_with_rate_and_eta_on_a_terminal_and_logs_above_it(tmp_path):
    main, child = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXR_HOME": str(tmp_path), "COLUMNS": "160"}
    process = subprocess.Popen(
        [sys.executable, "-c", BAR_SCRIPT],
        cwd=REPO,
        env=env,
        stdout=child,
        stderr=child,
        stdin=subprocess.DEVNULL,
    )
    os.close(child)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.wait(timeout=30) == 0
    text = output.decode(errors="replace")
    assert "finished" in text
    assert "30/30" in text and "files/s" in text and "ETA" in text
    assert "a log line while the bar is shown" in text


def test_progress_artifact_in_a_flow_run(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    @flow
    def counting() -> str:
        with stage_progress("train seed", 40, "steps", artifact_key="test-progress") as progress:
            progress.advance(30)
        return str(flow_run.id)

    run_id = counting()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    [artifact] = [artifact for artifact in artifacts if artifact.type == "progress"]
    assert (artifact.key, artifact.type) == ("test-progress", "progress")
    assert artifact.data == 75.0  # where it ended: 30 of 40 steps
