"""The MLflow store a tracking URI names: a quiet client, and where a sqlite store keeps its files."""

from __future__ import annotations

import logging
from pathlib import Path


def quiet_mlflow() -> None:
    """Keep MLflow's per-call INFO lines (table creation, 'Created version') out of task logs."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(tracking_uri: str):  # noqa: ANN201 - MlflowClient; mlflow is imported lazily (slow import)
    """An MlflowClient whose tracking and registry stores are both `tracking_uri`."""
    from mlflow import MlflowClient

    quiet_mlflow()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a sqlite store (absolute); None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve()


def store_exists(tracking_uri: str) -> bool:
    """False for a sqlite store whose file is missing: opening it would create an empty one."""
    path = sqlite_file(tracking_uri)
    return path is None or path.is_file()


def sqlite_artifact_root(tracking_uri: str) -> Path | None:
    """`<db folder>/artifacts` for a sqlite store (absolute, so runs don't depend on the cwd); else None."""
    database = sqlite_file(tracking_uri)
    if database is None:
        return None
    root = database.parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root
