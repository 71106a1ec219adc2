"""A trained model by path or MLflow URI: downloaded once into the state folder, checked, loaded safely.

A registered version's `model.keras` and `model.json` are checked against its `model_sha256` and
`metadata_sha256` tags, so a `models:/` URI resolves to the byte-identical files the training stage wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cxr.core.atomic_files import sha256_file
from cxr.core.errors import ModelError
from cxr.core.locking import file_lock
from cxr.core.mlflow_store import client
from cxr.core.state_folder import state_dir

# Where the trained files sit inside a logged model: the pyfunc's `artifacts` folder, or `extra_files`
# in versions logged with MLflow's tensorflow flavour before the pyfunc (still loadable for rollbacks).
MODEL_FILE_DIRS = ("artifacts", "extra_files")
KERAS_FILE = "model.keras"
METADATA_FILE = "model.json"
# The version tags that hold each file's sha256 (versions registered before `metadata_sha256` lack it).
MODEL_SHA256_TAG = "model_sha256"
METADATA_SHA256_TAG = "metadata_sha256"


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


def _registry_source(uri: str, tracking_uri: str) -> tuple[str, str, dict[str, str]]:
    """(immutable download URI, cache name, expected sha256 per file name) for a models:/ or runs:/ URI.

    Aliases are resolved to a version first, because the alias moves but a version never changes.
    """
    if uri.startswith("runs:/"):
        return uri, uri, {}
    version = registered_version(uri, tracking_uri)
    immutable = f"models:/{version.name}/{version.version}"
    # Named by what the version points at too: a store deleted and made anew reuses version numbers.
    cache_name = f"{immutable}|{version.run_id}|{version.source}"
    tags = {KERAS_FILE: MODEL_SHA256_TAG, METADATA_FILE: METADATA_SHA256_TAG}
    return (
        immutable,
        cache_name,
        {file: version.tags[tag] for file, tag in tags.items() if version.tags.get(tag)},
    )


def _mismatched(model_file: Path, expected: dict[str, str]) -> list[str]:
    """The files next to `model_file` whose sha256 is not the registered one (a missing file counts)."""
    return [
        name
        for name, digest in expected.items()
        if not model_file.with_name(name).is_file() or sha256_file(model_file.with_name(name)) != digest
    ]


def resolve_model(uri_or_path: str | Path, tracking_uri: str | None = None) -> Path:
    """Local path of a `model.keras`: a file or model folder as is; a registry or run URI downloaded.

    Downloads land in a cache folder under `registry-cache/` named after the immutable URI and the
    store, written to a temporary folder first so an interrupted download is never reused. One lock per
    cache folder: two processes loading the same version for the first time download it once.
    """
    text = str(uri_or_path)
    if not text.startswith(("models:/", "runs:/")):
        path = Path(text)
        path = path / KERAS_FILE if path.is_dir() else path
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return path
    from cxr.core.state_folder import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    source, cache_name, expected = _registry_source(text, tracking_uri)
    cache = (
        state_dir("registry-cache") / hashlib.sha256(f"{tracking_uri}|{cache_name}".encode()).hexdigest()[:16]
    )
    with file_lock(cache.with_name(f"{cache.name}.lock")):
        if cache.is_dir():
            found = _model_file(cache, text)
            if not _mismatched(found, expected):
                return found
            shutil.rmtree(cache)  # a damaged or stale download is fetched again, never used
        _download(source, cache, tracking_uri, text)
        found = _model_file(cache, text)
        if wrong := _mismatched(found, expected):
            raise ModelError(f"{text}: {' and '.join(wrong)} do not match the version's registered sha256")
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

    import cxr.model.networks  # noqa: F401 - registers the project's custom layers for deserialisation

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
