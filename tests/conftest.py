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

from cxr.state import configure_environment  # noqa: E402

configure_environment()

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
    from cxr.demo_data import write_demo_dataset

    out = tmp_path_factory.mktemp("tiny") / "chest_xray"
    write_demo_dataset(out, n=80, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for tests that run flows or tasks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
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
