"""The MLflow model registry as this project uses it: experiment setup, versions, the champion alias.

Every registered version carries the trained `model.keras` (byte-identical, checked against the
`model_sha256` tag) and its `model.json` as the artifacts of its pyfunc model (`cxr.pyfunc_logging`),
so a `models:/` URI resolves to the same file the training stage wrote. The `champion` alias names
the model in service; its history is a stack kept in the registered model's `champion_history` tag,
which `rollback` pops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr.errors import ModelError
from cxr.files import sha256_file
from cxr.state import state_dir

EXPERIMENT_NAME = "cxr-retrain"
CHAMPION_ALIAS = "champion"
HISTORY_TAG = "champion_history"
CHANGE_TAG = "champion_change"
MODEL_ARTIFACT = "model"
# Where the trained files sit inside a logged model: the pyfunc's `artifacts` folder, or `extra_files`
# in versions logged with MLflow's tensorflow flavour before the pyfunc (still loadable for rollbacks).
MODEL_FILE_DIRS = ("artifacts", "extra_files")
KERAS_FILE = "model.keras"
METADATA_FILE = "model.json"
LISTED_METRICS = ("auc", "accuracy", "sensitivity", "specificity")
# Registry tag values are length-limited; the oldest champions fall off the stack first.
MAX_HISTORY = 20


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


def registered_model_names(tracking_uri: str) -> list[str]:
    return sorted(model.name for model in client(tracking_uri).search_registered_models())


def sqlite_artifact_root(tracking_uri: str) -> Path | None:
    """`<db folder>/artifacts` for a sqlite store (absolute, so runs don't depend on the cwd); else None."""
    database = sqlite_file(tracking_uri)
    if database is None:
        return None
    root = database.parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


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

    from cxr.notify import announce_champion_change

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


def registered_version(uri: str, tracking_uri: str):  # noqa: ANN201 - mlflow ModelVersion
    """The version a `models:/NAME/N` or `models:/NAME@ALIAS` URI names (an alias as it points now)."""
    from mlflow.exceptions import MlflowException

    reference = uri.removeprefix("models:/").strip("/")
    mlflow_client = client(tracking_uri)
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            return mlflow_client.get_model_version_by_alias(name, alias)
        name, number = reference.rsplit("/", 1)
        return mlflow_client.get_model_version(name, number)
    except (MlflowException, ValueError) as exc:
        raise ModelError(f"no registered model at {uri}: {exc}") from exc


def _registry_source(uri: str, tracking_uri: str) -> tuple[str, str, str | None]:
    """(immutable download URI, cache name, expected sha256) for a models:/ or runs:/ URI.

    Aliases are resolved to a version first, because the alias moves but a version never changes.
    """
    if uri.startswith("runs:/"):
        return uri, uri, None
    version = registered_version(uri, tracking_uri)
    immutable = f"models:/{version.name}/{version.version}"
    # Named by what the version points at too: a store deleted and made anew reuses version numbers.
    cache_name = f"{immutable}|{version.run_id}|{version.source}"
    return immutable, cache_name, version.tags.get("model_sha256")


def resolve_model(uri_or_path: str | Path, tracking_uri: str | None = None) -> Path:
    """Local path of a `model.keras`: a file or model folder as is; a registry or run URI downloaded.

    Downloads land in a cache folder under `registry-cache/` named after the immutable URI and the
    store, written to a temporary folder first so an interrupted download is never reused.
    """
    text = str(uri_or_path)
    if not text.startswith(("models:/", "runs:/")):
        path = Path(text)
        path = path / KERAS_FILE if path.is_dir() else path
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return path
    from cxr.state import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    source, cache_name, expected_sha = _registry_source(text, tracking_uri)
    cache = (
        state_dir("registry-cache") / hashlib.sha256(f"{tracking_uri}|{cache_name}".encode()).hexdigest()[:16]
    )
    if cache.is_dir():
        found = _model_file(cache, text)
        if not expected_sha or sha256_file(found) == expected_sha:
            return found
        shutil.rmtree(cache)  # a damaged or stale download is fetched again, never used
    _download(source, cache, tracking_uri, text)
    found = _model_file(cache, text)
    if expected_sha and sha256_file(found) != expected_sha:
        raise ModelError(f"{text}: model.keras does not match its registered sha256 {expected_sha[:12]}")
    return found


def _download(source: str, cache: Path, tracking_uri: str, text: str) -> None:
    """Download `source`'s artifacts into `cache` through a temporary folder, so a partial one is never used."""
    from mlflow.artifacts import download_artifacts

    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
    try:
        download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri)
    except Exception as exc:  # mlflow raises several types for a missing or unreachable artifact
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelError(f"cannot download {text}: {exc}") from exc
    staging.rename(cache)


def _model_file(cache: Path, text: str) -> Path:
    found = [path for folder in MODEL_FILE_DIRS for path in sorted(cache.rglob(f"{folder}/{KERAS_FILE}"))]
    if not found:
        raise ModelError(
            f"{text} holds no {KERAS_FILE} in {' or '.join(MODEL_FILE_DIRS)} (not logged by this project?)"
        )
    return found[0]


def load_model_with_metadata(uri_or_path: str | Path, tracking_uri: str | None = None) -> tuple[Any, dict]:
    """The Keras model (safe_mode=True: no Lambda or other arbitrary code) and its `model.json`."""
    import keras

    import cxr.models  # noqa: F401 - registers the project's custom layers for deserialisation

    path = resolve_model(uri_or_path, tracking_uri)
    metadata_path = path.with_name(METADATA_FILE)
    if not metadata_path.is_file():
        raise ModelError(f"{path} has no {METADATA_FILE} next to it")
    try:
        metadata = json.loads(metadata_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{metadata_path} is not valid JSON: {exc}") from exc
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # keras raises ValueError/TypeError/OSError for unsafe or corrupt files
        raise ModelError(f"cannot load {path} safely: {exc}") from exc
    if tuple(model.output_shape) != (None, 2):
        raise ModelError(f"{path} outputs {model.output_shape}, expected a 2-way softmax (None, 2)")
    return model, metadata
