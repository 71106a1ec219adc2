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

from cxr.core import faults
from cxr.core.errors import ModelError
from cxr.core.locking import registry_lock
from cxr.core.mlflow_store import client, sqlite_artifact_root

EXPERIMENT_NAME = "cxr-retrain"
CHAMPION_ALIAS = "champion"
HISTORY_TAG = "champion_history"
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


class RegistryUnavailable(ConnectionError):
    """The registry did not answer a question it must answer (a 5xx, a timeout, a locked store): transient
    (`cxr.core.task_policy.is_transient`, an OSError), never read as "no champion"."""


def is_missing(error: Exception) -> bool:
    """Whether an MLflow error says "no such registered model" or "no such alias" (sqlite and REST stores
    alike, MLflow 3: RESOURCE_DOES_NOT_EXIST for the model, INVALID_PARAMETER_VALUE "alias ... not found")."""
    code = getattr(error, "error_code", "")
    message = str(error)
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message
    )


def champion_version(name: str, tracking_uri: str) -> int | None:
    """The version the `champion` alias points at, or None when the model or the alias does not exist.

    Any other registry error raises `RegistryUnavailable`: read as "no champion", it would let the gate
    promote a challenger unchecked.
    """
    from mlflow.exceptions import MlflowException

    try:
        return int(client(tracking_uri).get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException as error:
        if is_missing(error):
            return None
        raise RegistryUnavailable(
            f"registry at {tracking_uri} did not say which version of {name} is champion: {error}"
        ) from error


def was_champion(name: str, version: int, tracking_uri: str) -> bool:
    """Whether `version` is champion now or was one and left (by a rollback, or for a later champion).

    The top of the history does not count without the alias: releases before the alias moved first
    recorded the history before moving it, so a run that died in between left the version there.
    """
    if champion_version(name, tracking_uri) == version:
        return True
    if "rolled_back_at" in client(tracking_uri).get_model_version(name, str(version)).tags:
        return True
    return version in [int(entry["version"]) for entry in champion_history(name, tracking_uri)[:-1]]


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
    name: str,
    version: int,
    stack: list[dict[str, Any]],
    tracking_uri: str,
    *,
    action: str,
    reason: str,
    version_tags: dict[int, dict[str, str]],
) -> None:
    """Move the alias first, then record the move: the history `stack`, the `champion_change` tag and
    `version_tags` (per version: why it was promoted or left; the gate's decision last of all).

    A failure while recording puts the alias and every tag back as they were, so the registry shows the
    old champion or the new one whole and a retry starts afresh. The change is announced as a
    `cxr.champion.changed` event (notifications) once it is whole. Callers hold the registry lock.
    """
    from prefect.runtime import flow_run

    from cxr.registry.model_events import announce_champion_change

    mlflow_client = client(tracking_uri)
    model_tags = mlflow_client.get_registered_model(name).tags
    alias_before = champion_version(name, tracking_uri)
    recorded = json.loads(model_tags.get(HISTORY_TAG, "[]"))
    # An alias already on `version` without its record is a move that died half-way: it moved from the
    # champion the history names.
    previous = (
        int(recorded[-1]["version"])
        if alias_before == version and recorded and int(recorded[-1]["version"]) != version
        else alias_before
    )
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
    before = {None: model_tags} | {
        number: mlflow_client.get_model_version(name, str(number)).tags for number in version_tags
    }
    records = [(None, HISTORY_TAG, json.dumps(stack[-MAX_HISTORY:])), (None, CHANGE_TAG, json.dumps(change))]
    records += [(number, key, value) for number, tags in version_tags.items() for key, value in tags.items()]
    faults.fail_first("registry_alias")
    mlflow_client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    written: list[tuple[int | None, str]] = []
    try:
        for number, key, value in records:
            faults.fail_first(f"registry_record_{key}")
            written.append((number, key))
            _set_tag(mlflow_client, name, number, key, value)
    except BaseException:
        put_alias_back(name, alias_before, tracking_uri)
        for number, key in written:
            _set_tag(mlflow_client, name, number, key, before[number].get(key))
        raise
    if previous != version:
        announce_champion_change(change)


def put_alias_back(name: str, previous: int | None, tracking_uri: str) -> None:
    """The alias back on `previous` (gone when None), for a move that is undone; callers hold the registry lock."""
    mlflow_client = client(tracking_uri)
    if previous is None:
        mlflow_client.delete_registered_model_alias(name, CHAMPION_ALIAS)
    else:
        mlflow_client.set_registered_model_alias(name, CHAMPION_ALIAS, str(previous))


def undo_half_move(name: str, version: int, previous: int | None, tracking_uri: str) -> None:
    """Undo a move to `version` that died before it was recorded whole: the alias back on `previous`, and
    `version`'s entry off the top of the history if it got there. Callers hold the registry lock."""
    put_alias_back(name, previous, tracking_uri)
    stack = champion_history(name, tracking_uri)
    if stack and int(stack[-1]["version"]) == version:
        client(tracking_uri).set_registered_model_tag(name, HISTORY_TAG, json.dumps(stack[:-1]))


def _set_tag(mlflow_client: Any, name: str, version: int | None, key: str, value: str | None) -> None:  # noqa: ANN401
    """Set (or, for None, delete) tag `key` of the registered model (`version` None) or of one version."""
    if version is None and value is None:
        mlflow_client.delete_registered_model_tag(name, key)
    elif version is None:
        mlflow_client.set_registered_model_tag(name, key, value)
    elif value is None:
        mlflow_client.delete_model_version_tag(name, str(version), key)
    else:
        mlflow_client.set_model_version_tag(name, str(version), key, value)


def last_champion_change(name: str, tracking_uri: str) -> dict[str, Any] | None:
    """The latest move of the `champion` alias (see `_move_champion`), or None before the first."""
    recorded = client(tracking_uri).get_registered_model(name).tags.get(CHANGE_TAG)
    return json.loads(recorded) if recorded else None


def promote(
    name: str, version: int, reason: str, tracking_uri: str, *, version_tags: dict[str, str] | None = None
) -> None:
    """Make `version` the champion, recording why on the version (with `version_tags`, e.g. the gate's
    decision) and in the champion history; under the registry lock, as every move of the alias."""
    from mlflow.exceptions import MlflowException

    with registry_lock(tracking_uri, name):
        try:
            client(tracking_uri).get_model_version(name, str(version))
        except MlflowException as exc:
            raise ModelError(f"{name} has no version {version}") from exc
        at = now_iso()
        stack = champion_history(name, tracking_uri)
        if stack and stack[-1]["version"] == int(version):  # completing an interrupted promotion of it
            stack.pop()
        stack.append({"version": int(version), "reason": reason, "at": at})
        tags = {"promotion_reason": reason, "promoted_at": at, **(version_tags or {})}
        _move_champion(
            name,
            int(version),
            stack,
            tracking_uri,
            action="promotion",
            reason=reason,
            version_tags={version: tags},
        )


def rollback(name: str, reason: str, tracking_uri: str) -> int:
    """Move the champion back to the previous champion (under the registry lock); returns that version."""
    with registry_lock(tracking_uri, name):
        current = champion_version(name, tracking_uri)
        if current is None:
            raise ModelError(f"{name} has no champion to roll back")
        stack = champion_history(name, tracking_uri)
        while stack and stack[-1]["version"] == current:
            stack.pop()
        if not stack:
            raise ModelError(f"{name} has no previous champion before version {current}")
        previous = int(stack[-1]["version"])
        left = {"rollback_reason": reason, "rolled_back_at": now_iso()}
        _move_champion(
            name,
            previous,
            stack,
            tracking_uri,
            action="rollback",
            reason=reason,
            version_tags={current: left},
        )
        return previous
