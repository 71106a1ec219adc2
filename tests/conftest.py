"""Test-wide state: a throwaway $CXR_HOME set before Prefect/TensorFlow are imported."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import absl.logging
import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="cxr-test-home-"))
os.environ["CXR_HOME"] = str(_SESSION_HOME)
for _var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_ARTIFACTS_DESTINATION"):
    os.environ.pop(_var, None)
# A `cxr` command without PREFECT_API_URL starts the state folder's long-lived server, which would outlive
# the test. Tests talk to servers they start and stop themselves (`prefect_harness`, tests/helpers/servers.py), so
# any command that gets none uses Prefect's temporary in-process server instead. Inherited by subprocesses;
# tests of the long-lived server (test_local_server.py) remove it and stop what they start.
os.environ["CXR_PREFECT_SERVER"] = "ephemeral"

from cxr.core.state_folder import PREFECT_STARTUP_TIMEOUT_S, configure_environment  # noqa: E402

configure_environment()

# Registry fixtures (`empty_store`, `tracking_uri`, `test_split`) for every test that registers models.
pytest_plugins = ["tests.helpers.registering"]

# absl's log handler (made when TensorFlow first loads, maybe while a test module is collected) closes the
# stream it was made with unless that stream is the current sys.stderr, and every non-incremental logging
# set-up (Prefect's first, MLflow's) closes all handlers. Inside a test that captures output with capsys
# this closed pytest's own stderr capture and ended the session. The real stderr (still captured at the
# file-descriptor level) is never closed.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def cxr_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout (64 px images)."""
    from cxr.data.demo_data import write_demo_dataset

    out = tmp_path_factory.mktemp("tiny") / "chest_xray"
    write_demo_dataset(out, n=80, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for tests that run flows or tasks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_TIMEOUT_S):
        yield


@pytest.fixture
def isolated_registry(tmp_path, monkeypatch) -> str:
    """An MLflow registry of this test's own; returns its tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA
