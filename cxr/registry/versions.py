"""The MLflow model registry as this project uses it: experiment setup, versions, the champion alias.

Every registered version carries the trained `model.keras` (byte-identical, checked against the
`model_sha256` tag) and its `model.json` as the artifacts of its pyfunc model (`cxr.registry.pyfunc_logging`);
`cxr.model.loading` resolves a `models:/` URI to the file the training stage wrote. The `champion` alias names
the model in service; its history is a stack kept in the registered model's `champion_history` tag,
which `rollback` pops.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cxr.core.errors import ModelError
from cxr.core.mlflow_store import client, sqlite_artifact_root

EXPERIMENT_NAME = "cxr-retrain"
CHAMPION_ALIAS = "champion"
HISTORY_TAG = "champion_history"
# A version is the network (`model_sha256`) AND its model.json (operating points, domain score): both digests
# are tags, so a run that only refits the metadata registers a new version instead of finding the old one.
METADATA_SHA256_TAG = "metadata_sha256"
CHANGE_TAG = "champion_change"
MODEL_ARTIFACT = "model"
LISTED_METRICS = ("auc", "accuracy", "sensitivity", "specificity")
# Registry tag values are length-limited; the oldest champions fall off the stack first.
MAX_HISTORY = 20


def registered_model_names(tracking_uri: str) -> list[str]:
    return sorted(model.name for model in client(tracking_uri).search_registered_models())


def ensure_experiment(tracking_uri: str, name: str = EXPERIMENT_NAME) -> str:
    """The id of experiment `name`, created on first use with an absolute local artifact location."""
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = sqlite_artifact_root(tracking_uri)
    return mlflow_client.create_experiment(name, artifact_location=root.as_uri() if root else None)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The test metrics recorded as `test_<metric>` tags on a version."""
    return {
        key.removeprefix("test_"): float(value)
        for key, value in tags.items()
        if key.startswith("test_") and value not in ("", "None")
    }


def champion_version(name: str, tracking_uri: str) -> int | None:
    """The version the `champion` alias points at, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client(tracking_uri).get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def list_versions(name: str, tracking_uri: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, with its aliases, headline test metrics and lineage."""
    mlflow_client = client(tracking_uri)
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    # Version search leaves `aliases` empty in some stores; the registered model has them all.
    aliases = mlflow_client.get_registered_model(name).aliases if versions else {}
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        metrics = version_metrics(version.tags)
        rows.append(
            {
                "version": int(version.version),
                "aliases": sorted(
                    alias for alias, number in aliases.items() if str(number) == str(version.version)
                ),
                "metrics": {key: metrics.get(key) for key in LISTED_METRICS},
                "data_digest": version.tags.get("data_digest", ""),
                "model_name": version.tags.get("model_name", ""),
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
            }
        )
    return rows


def champion_history(name: str, tracking_uri: str) -> list[dict[str, Any]]:
    """The stack of champions, oldest first: `{"version", "reason", "at"}` entries."""
    tags = client(tracking_uri).get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _move_champion(
    name: str, version: int, stack: list[dict[str, Any]], tracking_uri: str, *, action: str, reason: str
) -> None:
    """Record the history first and move the alias last, so a failure never leaves an unrecorded champion.

    The move itself (from, to, how, why, when, which flow run) is kept in the `champion_change` tag and
    announced as a `cxr.champion.changed` event (notifications).
    """
    from prefect.runtime import flow_run

    from cxr.registry.model_events import announce_champion_change

    previous = champion_version(name, tracking_uri)
    change = {
        "model_name": name,
        "version": version,
        "previous": previous,
        "action": action,
        "reason": reason,
        "at": now_iso(),
        "flow_run": flow_run.name if flow_run.id else None,
        "model_uri": f"models:/{name}/{version}",
    }
    mlflow_client = client(tracking_uri)
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(stack[-MAX_HISTORY:]))
    mlflow_client.set_registered_model_tag(name, CHANGE_TAG, json.dumps(change))
    mlflow_client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    if previous != version:
        announce_champion_change(change)


def last_champion_change(name: str, tracking_uri: str) -> dict[str, Any] | None:
    """The latest move of the `champion` alias (see `_move_champion`), or None before the first."""
    recorded = client(tracking_uri).get_registered_model(name).tags.get(CHANGE_TAG)
    return json.loads(recorded) if recorded else None


def promote(name: str, version: int, reason: str, tracking_uri: str) -> None:
    """Make `version` the champion, recording why on the version and in the champion history."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise ModelError(f"{name} has no version {version}") from exc
    at = now_iso()
    mlflow_client.set_model_version_tag(name, str(version), "promotion_reason", reason)
    mlflow_client.set_model_version_tag(name, str(version), "promoted_at", at)
    stack = champion_history(name, tracking_uri)
    stack.append({"version": int(version), "reason": reason, "at": at})
    _move_champion(name, int(version), stack, tracking_uri, action="promotion", reason=reason)


def rollback(name: str, reason: str, tracking_uri: str) -> int:
    """Move the champion back to the previous champion; returns that version."""
    current = champion_version(name, tracking_uri)
    if current is None:
        raise ModelError(f"{name} has no champion to roll back")
    stack = champion_history(name, tracking_uri)
    while stack and stack[-1]["version"] == current:
        stack.pop()
    if not stack:
        raise ModelError(f"{name} has no previous champion before version {current}")
    previous = int(stack[-1]["version"])
    mlflow_client = client(tracking_uri)
    mlflow_client.set_model_version_tag(name, str(current), "rollback_reason", reason)
    mlflow_client.set_model_version_tag(name, str(current), "rolled_back_at", now_iso())
    _move_champion(name, previous, stack, tracking_uri, action="rollback", reason=reason)
    return previous
