"""The state folder ($CXR_HOME) and the environment every entry point sets before importing Prefect/TF."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cxr.core.errors import CxrError
from cxr.core.native_logs import quiet_native_logs

# How long anything waits for a Prefect server to answer: the state folder's server (`cxr.ops.server`), the
# test and bench servers, and Prefect's own temporary server where one is still used. A first start sets up
# its database: on a busy 2-core machine that races Prefect's own default of 20 s.
PREFECT_STARTUP_TIMEOUT_S = 300


def cxr_home() -> Path:
    """Root of all state this project writes (cache, manifests, models, registry, Prefect home)."""
    return Path(os.environ.get("CXR_HOME", Path.cwd() / ".cxr")).resolve()


def state_dir(*parts: str) -> Path:
    """A sub-folder of the state folder, created on demand."""
    path = cxr_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    """MLflow store: $MLFLOW_TRACKING_URI, else a sqlite file in the state folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir('mlflow') / 'mlflow.db'}"


def configure_environment() -> None:
    """Point every library's home into the state folder and switch telemetry off.

    Called by entry points (CLI, tests, deployments) before Prefect or TensorFlow is imported,
    because both read these variables at import time. Existing values win. Raises CxrError when
    the state folder cannot be written, before any run starts.
    """
    home = cxr_home()
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        # JSON, not pickle: a cached result must never be able to run code when it is read back.
        "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PREFECT_STARTUP_TIMEOUT_S),
        "KERAS_HOME": str(home / "keras"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "MPLBACKEND": "Agg",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(home / "mlflow" / "artifacts"),
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    quiet_native_logs()  # TensorFlow's native log levels are read when it loads
    try:
        for sub in ("prefect", "keras", "matplotlib", "mlflow"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):  # a read-only mount accepts mkdir of existing folders
            pass
    except OSError as error:
        raise CxrError(f"state folder {home} is not writable: {error.strerror or error}") from error
    # Prefect stores persisted task results here; they are the cross-run cache.
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "prefect" / "storage"))
