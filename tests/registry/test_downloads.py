"""Registry downloads (`cxr.model.loading.resolve_model`): both files checked against the version's digests,
and one download per cache entry however many first loads race for it."""

from __future__ import annotations

import threading
import time

import pytest

from cxr.core.atomic_files import sha256_file
from cxr.core.errors import ModelError
from cxr.core.mlflow_store import sqlite_artifact_root
from cxr.model import loading
from tests.helpers.registering import register, trained


def stored_metadata(tracking_uri: str):  # noqa: ANN201 - list[Path]
    """The version's `model.json` copies in the store's artifact folder (the run's and the logged model's)."""
    return sorted(sqlite_artifact_root(tracking_uri).rglob(f"artifacts/{loading.METADATA_FILE}"))


def test_a_model_json_unlike_the_registered_one_is_refused(tmp_path, tracking_uri, test_split):
    """The store's model.json replaced (operating points edited by hand, a restored backup): the download is
    refused, not served with other thresholds. On the old code only model.keras was checked."""
    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    stored = stored_metadata(tracking_uri)
    registered = stored[0].read_bytes()
    for path in stored:
        path.write_text(registered.decode().replace('"threshold": 0.5', '"threshold": 0.9'))
    with pytest.raises(ModelError, match="model.json do not match"):
        loading.resolve_model(result.model_uri, tracking_uri)

    # Put right in the store: downloaded again. Then damaged in the cache only: fetched again, not used.
    for path in stored:
        path.write_bytes(registered)
    cached = loading.resolve_model(result.model_uri, tracking_uri)
    cached.with_name(loading.METADATA_FILE).write_text("{}")
    again = loading.resolve_model(result.model_uri, tracking_uri)
    assert again.with_name(loading.METADATA_FILE).read_bytes() == registered
    assert sha256_file(again) == trained(tmp_path, 3.0)[0].model_sha256


def test_two_first_loads_of_one_version_download_it_once(tmp_path, tracking_uri, test_split, monkeypatch):
    """Two threads load a version nobody has downloaded, with a slow download so that both are inside it
    at once. On the old code both downloaded and the second rename onto the cache folder failed (OSError)."""
    import mlflow.artifacts

    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    real_download = mlflow.artifacts.download_artifacts
    downloads = []

    def slow_download(**kwargs: object) -> str:
        downloads.append(kwargs["artifact_uri"])
        time.sleep(1.5)
        return real_download(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", slow_download)
    outcomes: list[object] = []

    def first_load() -> None:
        try:
            outcomes.append(loading.resolve_model(result.model_uri, tracking_uri))
        except Exception as error:  # the outcome under test
            outcomes.append(error)

    loaders = [threading.Thread(target=first_load) for _ in range(2)]
    for loader in loaders:
        loader.start()
    for loader in loaders:
        loader.join(timeout=120)
    assert len(outcomes) == 2 and outcomes[0] == outcomes[1], outcomes
    assert downloads == [result.model_uri]
    assert sha256_file(outcomes[0]) == trained(tmp_path, 3.0)[0].model_sha256
