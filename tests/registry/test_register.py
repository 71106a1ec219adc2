"""MLflow registration, the champion/challenger gate and the registry helpers (temp sqlite store per test)."""

from __future__ import annotations

import json
import shutil
import time
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import pytest

from cxr.config.params import GateParams
from cxr.core import mlflow_store
from cxr.core.atomic_files import sha256_file
from cxr.core.errors import ModelError
from cxr.core.state_folder import state_dir
from cxr.model import loading
from cxr.registry import versions
from tasks.register import champion_now
from tests.helpers.registering import NAME, register, trained
from tests.helpers.toy_models import SIZE, brightness_model, save_model


def test_first_model_becomes_champion_with_lineage(tmp_path, tracking_uri, test_split):
    started = time.perf_counter()
    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    print(f"log_model + register: {time.perf_counter() - started:.2f} s")
    assert (result.version, result.champion, result.model_uri) == (1, True, f"models:/{NAME}/1")
    assert result.decision["promoted"] and result.decision["champion_version"] is None
    client = mlflow_store.client(tracking_uri)
    version = client.get_model_version(NAME, "1")
    assert version.tags["data_digest"] == "d" * 16 and version.tags["code_version"] == "v1"
    assert json.loads(version.tags["promotion_decision"])["promoted"] is True
    run = client.get_run(result.run_id)
    for tags in (version.tags, run.data.tags):  # operating points, for registry readers and run search
        assert tags["default_operating_point"] == "fixed"
        assert (tags["operating_point.fixed.threshold"], tags["operating_point.fixed.specificity"]) == (
            "0.500000",
            "0.800000",
        )
    assert run.data.params["lineage.seed"] == "1" and "test_auc_ci_low" in run.data.metrics
    assert [m.step for m in client.get_metric_history(result.run_id, "epoch_loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/roc-curve.png", "evaluation/report.md"} <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == versions.EXPERIMENT_NAME
    assert experiment.artifact_location == (tmp_path / "artifacts").as_uri()
    # The same model again (a retry or rerun) reuses its version instead of registering a duplicate.
    again = register(tmp_path, tracking_uri, test_split, gain=3.0)
    assert again.version == 1 and len(versions.list_versions(NAME, tracking_uri)) == 1
    assert (result.created, again.created) == (True, False) and card_of(again) == card_of(result)


def test_the_same_network_with_other_metadata_is_another_version(tmp_path, tracking_uri, test_split):
    """A run that only refits model.json (domain score, operating points) must not be answered with the version
    that carries the old one."""
    first = register(tmp_path, tracking_uri, test_split, gain=3.0)
    metadata_path = Path(trained(tmp_path, 3.0)[0].metadata_path)
    metadata_path.write_text(json.dumps({**json.loads(metadata_path.read_text()), "domain_note": "refitted"}))
    refitted = register(tmp_path, tracking_uri, test_split, gain=3.0)
    assert (refitted.version, refitted.created, refitted.model_sha256) == (2, True, first.model_sha256)
    registered = loading.resolve_model(refitted.model_uri, tracking_uri).with_name("model.json")
    assert json.loads(registered.read_text())["domain_note"] == "refitted"
    assert register(tmp_path, tracking_uri, test_split, gain=3.0).version == 2  # and a rerun finds it


def card_of(result) -> str:
    """The model card the registration carries as its `model-card` artifact."""
    return next(artifact.markdown for artifact in result.artifacts if artifact.key == "model-card")


def test_run_carries_pyfunc_summary_tensorboard_and_card(tmp_path, tracking_uri, test_split):
    from mlflow.models import get_model_info

    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    client = mlflow_store.client(tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"model_summary.txt", "model_card.md", "tensorboard"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "tensorboard/train")] == [
        "tensorboard/train/events.out.tfevents.1"
    ]
    summary = client.download_artifacts(result.run_id, "model_summary.txt", str(tmp_path))
    assert "Total params" in Path(summary).read_text()
    card = card_of(result)
    assert card.startswith(f"# Model card: {NAME} v1") and "| test | 20 | 20 | 40 |" in card
    assert f"`{result.run_id}`" in card and "/data/xrays" in card and "| default (default) | 0.5000 |" in card
    info = get_model_info(f"models:/{NAME}/1")
    assert list(info.flavors) == ["python_function"] and info.metadata["keras_version"] == package_version(
        "keras"
    )
    assert info.metadata["operating_points"] == {"default": {"threshold": 0.5}}
    # The registry resolves a version to the byte-identical trained file inside the pyfunc's artifacts.
    resolved = loading.resolve_model(f"models:/{NAME}/1", tracking_uri)
    assert resolved.parent.name == "artifacts" and sha256_file(resolved) == result.model_sha256


def test_cached_result_is_checked_against_the_registry(tmp_path, tracking_uri, test_split, empty_store):
    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    assert result.is_intact()
    # The store deleted and recreated empty: the cached version is gone, and registering again restores it.
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    assert not result.is_intact()
    again = register(tmp_path, tracking_uri, test_split, gain=3.0)
    assert again.created and again.version == 1 and again.is_intact()
    # A store where version 1 holds another model file (an older backup, another machine's store).
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    register(tmp_path, tracking_uri, test_split, gain=5.0)
    assert not again.is_intact()


def test_champion_now_reads_the_alias_after_promote_and_rollback(tmp_path, tracking_uri, test_split):
    first = register(tmp_path, tracking_uri, test_split, gain=3.0)
    second = register(tmp_path, tracking_uri, test_split, gain=-30.0)  # refused by the gate
    assert (first.champion, second.champion) == (True, False)
    versions.promote(NAME, second.version, "by hand", tracking_uri)
    assert (champion_now.fn(first).champion, champion_now.fn(first).champion_version) == (False, 2)
    assert champion_now.fn(second).champion
    versions.rollback(NAME, "back", tracking_uri)
    assert champion_now.fn(first).champion and not champion_now.fn(second).champion


def test_gate_promotes_better_refuses_worse_and_enforces_sensitivity_floor(
    tmp_path, tracking_uri, test_split
):
    assert register(tmp_path, tracking_uri, test_split, gain=0.5).champion  # weak but the first
    better = register(tmp_path, tracking_uri, test_split, gain=30.0)
    assert better.champion and better.decision["promoted"]
    assert better.decision["champion_version"] == 1
    assert better.decision["challenger"]["auc"] >= better.decision["champion"]["auc"]

    worse = register(tmp_path, tracking_uri, test_split, gain=-30.0)  # inverted: AUC near 0
    assert not worse.champion and not worse.decision["promoted"]
    assert versions.champion_version(NAME, tracking_uri) == 2

    blind = register(
        tmp_path, tracking_uri, test_split, gain=30.0, threshold=1.01, gate=GateParams(sensitivity_floor=0.5)
    )
    assert not blind.champion and "sensitivity" in blind.decision["reason"]

    margin = register(tmp_path, tracking_uri, test_split, gain=30.0, tag="copy", gate=GateParams(margin=0.5))
    assert not margin.decision["promoted"] and "margin" in margin.decision["reason"]

    rows = versions.list_versions(NAME, tracking_uri)
    assert [row["version"] for row in rows] == [5, 4, 3, 2, 1]
    by_version = {row["version"]: row for row in rows}
    assert by_version[2]["aliases"] == ["champion"] and by_version[3]["aliases"] == []
    assert by_version[3]["metrics"]["auc"] < 0.2 < by_version[2]["metrics"]["auc"]
    assert by_version[1]["data_digest"] == "d" * 16 and by_version[1]["model_name"] == "tiny"
    assert by_version[1]["created"].endswith("+00:00")


def test_promote_and_rollback_move_the_alias_and_record_why(tmp_path, tracking_uri, test_split):
    for gain in (1.0, 2.0, 3.0):
        register(
            tmp_path, tracking_uri, test_split, gain=gain, gate=GateParams(margin=1.0)
        )  # only v1 promoted
    assert versions.champion_version(NAME, tracking_uri) == 1
    versions.promote(NAME, 3, "manual: better on new data", tracking_uri)
    versions.promote(NAME, 2, "manual: canary", tracking_uri)
    assert versions.champion_version(NAME, tracking_uri) == 2
    assert versions.rollback(NAME, "canary failed", tracking_uri) == 3
    assert versions.rollback(NAME, "v3 drifted", tracking_uri) == 1
    assert versions.champion_version(NAME, tracking_uri) == 1
    tags = mlflow_store.client(tracking_uri).get_model_version(NAME, "3").tags
    assert (
        tags["promotion_reason"] == "manual: better on new data" and tags["rollback_reason"] == "v3 drifted"
    )
    assert [entry["version"] for entry in versions.champion_history(NAME, tracking_uri)] == [1]
    with pytest.raises(ModelError, match="no previous champion"):
        versions.rollback(NAME, "nothing left", tracking_uri)
    with pytest.raises(ModelError, match="no version 9"):
        versions.promote(NAME, 9, "typo", tracking_uri)


def test_resolve_model_for_a_path_and_registry_uris(tmp_path, tracking_uri, test_split):
    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    train, _ = trained(tmp_path, 3.0)
    assert loading.resolve_model(train.model_path) == Path(train.model_path)
    assert loading.resolve_model(Path(train.model_path).parent) == Path(train.model_path)
    by_version = loading.resolve_model(result.model_uri, tracking_uri)
    by_alias = loading.resolve_model(f"models:/{NAME}@champion", tracking_uri)
    assert by_version == by_alias and by_version.is_relative_to(state_dir("registry-cache"))
    assert sha256_file(by_version) == train.model_sha256  # byte-identical to the trained file
    model, metadata = loading.load_model_with_metadata(f"models:/{NAME}@champion", tracking_uri)
    assert metadata["threshold"] == 0.5 and model.output_shape == (None, 2)


def test_a_store_made_anew_is_not_answered_from_the_old_download(
    tmp_path, tracking_uri, test_split, empty_store
):
    """Version numbers restart in a recreated store: version 1 is downloaded again, not read from the cache."""
    first = loading.resolve_model(
        register(tmp_path, tracking_uri, test_split, gain=3.0).model_uri, tracking_uri
    )
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    again = register(tmp_path, tracking_uri, test_split, gain=5.0, tag="other")
    second = loading.resolve_model(again.model_uri, tracking_uri)
    assert again.version == 1 and second != first
    assert sha256_file(second) == trained(tmp_path, 5.0, tag="other")[0].model_sha256


def test_a_damaged_download_is_fetched_again(tmp_path, tracking_uri, test_split):
    result = register(tmp_path, tracking_uri, test_split, gain=3.0)
    cached = loading.resolve_model(result.model_uri, tracking_uri)
    cached.write_bytes(b"not the registered model")
    again = loading.resolve_model(result.model_uri, tracking_uri)
    assert sha256_file(again) == trained(tmp_path, 3.0)[0].model_sha256
    with pytest.raises(ModelError):
        loading.resolve_model(f"models:/{NAME}@nobody", tracking_uri)
    with pytest.raises(ModelError):
        loading.resolve_model(tmp_path / "missing.keras")


def test_load_model_with_metadata_refuses_lambda_and_missing_metadata(tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    unsafe = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(ModelError, match="safely"):
        loading.load_model_with_metadata(save_model(unsafe, tmp_path / "unsafe"))
    bare = tmp_path / "bare"
    bare.mkdir()
    brightness_model(1.0).save(bare / "model.keras")
    with pytest.raises(ModelError, match="model.json"):
        loading.load_model_with_metadata(bare)
    model, metadata = loading.load_model_with_metadata(save_model(brightness_model(1.0), tmp_path / "ok"))
    assert metadata["image_size"] == SIZE
    assert np.isfinite(model.predict(np.zeros((1, SIZE, SIZE, 1), "float32"), verbose=0)).all()
