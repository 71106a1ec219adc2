"""Surviving faults: transient I/O, an unavailable registry, kill -9 in training and registration,
concurrent runs, a full or read-only disk, corrupt cache entries, and untrusted inputs.

Faults are planned with $CXR_FAULTS (cxr/core/faults.py). Every test gets its own state folder, data copy
and MLflow store, so no cached result of another test can hide the fault.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cli.main import main
from cxr import REGISTERED_MODEL_NAME
from cxr.config.params import RetrainConfig
from cxr.core import faults
from tests.helpers.holders import holding

REPO = Path(__file__).resolve().parents[2]
TINY = {"train": {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}}
CLI_TINY = ["--model", "seed", "--image-size", "32", "--batch-size", "16", "--json"]
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture
def world(tmp_path, monkeypatch, tiny_dataset) -> Iterator[SimpleNamespace]:
    """A fresh state folder, a copy of the tiny dataset and an MLflow store, all for this test only."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    home = tmp_path / "home"
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    faults.reset()
    # Prefect read its result store's path when it was imported; in-process runs here must share the
    # store a `cxr` subprocess of this world uses, or a result it cached is missed.
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: home / "prefect" / "storage"}):
        yield SimpleNamespace(data=data, home=home, uri=uri, config=RetrainConfig(data_dir=str(data), **TINY))


def _train_args(world: SimpleNamespace, *extra: str) -> list[str]:
    return ["train", "--data", str(world.data), *CLI_TINY, *extra]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _cli_env(world: SimpleNamespace, planned_faults: str | None = None) -> dict[str, str]:
    """The environment of a `cxr` subprocess: this test's state and store, the test Prefect API."""
    from prefect.settings import get_current_settings

    inherited = ("PREFECT_", "MLFLOW_", "CXR_", "KERAS_HOME", "MPLCONFIGDIR")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    env.update(
        CXR_HOME=str(world.home),
        MLFLOW_TRACKING_URI=world.uri,
        PREFECT_API_URL=str(get_current_settings().api.url),
    )
    if planned_faults:
        env[faults.ENV_VAR] = planned_faults
    return env


def _start_cli(
    world: SimpleNamespace, args: list[str], planned_faults: str | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=_cli_env(world, planned_faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_cli(
    world: SimpleNamespace, args: list[str], planned_faults: str | None = None
) -> tuple[int, str, str]:
    process = _start_cli(world, args, planned_faults)
    try:
        out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        process.kill()  # only reached with a live process on timeout; harmless once it has exited
    return process.returncode, out, err


def _versions(world: SimpleNamespace) -> list[dict]:
    from cxr.registry.versions import list_versions

    return list_versions(REGISTERED_MODEL_NAME, world.uri)


# 1. Transient I/O -------------------------------------------------------------------------------


def _ingest_and_split(world):
    """The world's data ingested and split outside any flow."""
    from cxr.data.ingesting import ingest_folder
    from cxr.data.splitting import split_manifest

    ingested = ingest_folder(world.data, world.home / "ingest", min_side=world.config.ingest.min_image_side)
    return split_manifest(
        Path(ingested.manifest_path),
        world.home / "split",
        valid_fraction=0.15,
        test_fraction=0.15,
        seed=0,
        keep_official_test=False,
        min_images_per_class=2,
    )


def test_transient_read_errors_are_retried_and_change_nothing(prefect_harness, world, monkeypatch):
    """The first image read fails with EIO: ingest retries (after its 2 s delay) and the run's data is
    exactly that of a clean ingest. Checked: without the TRANSIENT_ERRNOS re-raise in cxr/data/imaging.py the
    file is quarantined as 'unreadable' and `accepted`/`data_digest` differ from the clean run."""
    from cxr.data.ingesting import ingest_folder
    from flows.retrain import retrain

    clean = ingest_folder(world.data, world.home / "clean", min_side=world.config.ingest.min_image_side)
    monkeypatch.setenv(faults.ENV_VAR, "read_image:1")

    summary = retrain(world.config)

    assert faults.hits("read_image") > 1  # the fault fired, and reading went on after it
    assert summary["data_digest"] == clean.digest
    assert summary["images"] == {"accepted": clean.accepted, "quarantined": clean.quarantined}
    assert summary["champion"] is True


def test_batches_task_retries_transient_read_errors(prefect_harness, world, monkeypatch):
    """Two failed reads, then the third attempt of `batches-shard` (retries=2) writes the same shard as a
    clean run. Checked: with `retries=0` in tasks/batches.py this raises the injected OSError."""
    from cxr.data.batches import materialise_batches, plan_shards
    from tasks import batches as batches_stage

    split = _ingest_and_split(world)
    clean = materialise_batches(split.split_path, world.home / "clean-batches", image_size=32)
    chunk = plan_shards(split.split_path, world.home / "retried-batches", image_size=32).chunks()[0]
    monkeypatch.setenv(faults.ENV_VAR, "read_image:2")
    fast_retries = batches_stage.build_batch_shards.with_options(retry_delay_seconds=0, refresh_cache=True)

    [result] = fast_retries([chunk])

    assert faults.hits("read_image") > 2
    assert result.sha256 == clean.shards(chunk.split)[chunk.number].sha256


# 2. Registry unavailable ------------------------------------------------------------------------


def test_unavailable_registry_fails_clearly_then_registers_without_retraining(
    prefect_harness, world, monkeypatch
):
    """Every registration attempt fails: register is tried 1 + 3 times, the flow fails with the error,
    the trained model stays, and the next run reuses the cached training and only registers.
    Checked: with `retries=0` on the register task, hits == 1 and the first assertion fails."""
    from flows.retrain import retrain
    from tasks import register as register_stage

    # The task's own retry count, without its 2-15 s waits.
    monkeypatch.setattr(
        register_stage, "register", register_stage.register.with_options(retry_delay_seconds=0)
    )
    monkeypatch.setenv(faults.ENV_VAR, "registry:99")

    with pytest.raises(OSError, match="injected fault at registry"):
        retrain(world.config)

    assert faults.hits("registry") == 4
    # One trained network, kept: the trained model's folder and the domain stage's guarded copy of it.
    kept = {path.read_bytes() for path in (world.home / "models").glob("*/model.keras")}
    assert len(kept) == 1
    assert _versions(world) == []

    monkeypatch.delenv(faults.ENV_VAR)
    summary = retrain(world.config)
    assert "train" in summary["cached_tasks"] and "register" not in summary["cached_tasks"]
    assert (summary["model_version"], summary["champion"]) == (1, True)


# 3. Killed during training ----------------------------------------------------------------------


def test_training_killed_after_an_epoch_resumes_from_it(prefect_harness, world, monkeypatch, capsys):
    """`cxr train --epochs 3` SIGKILLs itself after epoch 1; the next run resumes from epoch 1.
    The protection is BackupAndRestore in tasks/train.py (not run as a mutation: without it there is no
    `training_metadata.json`, so `_finished_epochs` reports 0 and the first assertion fails)."""
    code, _, err = _run_cli(world, _train_args(world, "--epochs", "3"), "kill_after_epoch:1")
    assert code == -signal.SIGKILL, err[-2000:]
    assert _versions(world) == []

    assert main(_train_args(world, "--epochs", "3")) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["resumed_from_epoch"] >= 1
    assert summary["epochs_run"] == 3


# 4. Killed during registration ------------------------------------------------------------------


def test_registration_killed_before_the_version_leaves_no_half_version(prefect_harness, world, capsys):
    """SIGKILL after the model is logged but before its version exists: no version and no champion,
    and the next run registers a complete version that becomes champion, byte-identical to the trained
    file. The protection is the order in tasks/register.py (version created only after log_model returns,
    alias moved last); not run as a mutation: creating the version first would leave one here, which
    `_versions(world) == []` rejects."""
    from cxr.core.atomic_files import sha256_file
    from cxr.model.loading import resolve_model
    from cxr.registry.versions import champion_version

    code, _, err = _run_cli(world, _train_args(world, "--epochs", "1"), "kill_before_version:1")
    assert code == -signal.SIGKILL, err[-2000:]
    assert _versions(world) == []
    assert champion_version(REGISTERED_MODEL_NAME, world.uri) is None

    assert main(_train_args(world, "--epochs", "1")) == 0
    summary = _last_json(capsys.readouterr().out)
    versions = _versions(world)
    assert [(row["version"], row["aliases"]) for row in versions] == [
        (summary["model_version"], ["champion"])
    ]
    model_file = resolve_model(f"models:/{REGISTERED_MODEL_NAME}@champion", world.uri)
    trained = [
        path
        for path in (world.home / "models").glob("*/model.keras")
        if not path.parent.name.startswith("guarded-")
    ]
    assert len(trained) == 1  # the killed run's training was reused, not repeated
    assert sha256_file(model_file) == sha256_file(trained[0])


# 5. Two runs at once ----------------------------------------------------------------------------


def test_concurrent_runs_take_turns_at_the_registry(prefect_harness, world):
    """Two `cxr train` processes (seeds 1 and 2, same state and store) register one after the other:
    the second gate sees the first champion. A 6 s pause inside the gate makes the two registrations
    overlap. Checked: replacing `registry_lock(...)` with `contextlib.nullcontext()` in
    tasks/register.py makes both decide "first model: no champion yet"."""
    from cxr.core.mlflow_store import client
    from cxr.registry.versions import champion_history

    runs = [_start_cli(world, _train_args(world, "--seed", str(seed)), "pause_in_gate:6") for seed in (1, 2)]
    outputs = []
    for process in runs:
        try:
            outputs.append(process.communicate(timeout=SUBPROCESS_TIMEOUT_S))
        finally:
            process.kill()
    for process, (_, err) in zip(runs, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    summaries = [_last_json(out) for out, _ in outputs]

    assert sorted(summary["model_version"] for summary in summaries) == [1, 2]
    decisions = {
        row["version"]: json.loads(
            client(world.uri)
            .get_model_version(REGISTERED_MODEL_NAME, str(row["version"]))
            .tags["promotion_decision"]
        )
        for row in _versions(world)
    }
    assert decisions[1]["champion_version"] is None
    assert decisions[2]["champion_version"] == 1  # decided against the first champion, not against nothing
    champions = [row["version"] for row in _versions(world) if "champion" in row["aliases"]]
    assert len(champions) == 1
    promoted = [version for version, decision in decisions.items() if decision["promoted"]]
    assert [entry["version"] for entry in champion_history(REGISTERED_MODEL_NAME, world.uri)] == promoted
    assert champions == promoted[-1:]


def test_registry_lock_excludes_other_processes(tmp_path):
    """While one process holds the lock another cannot take it, and it is free once the holder is killed
    (flock dies with its process). Checked: with the flock call removed the child takes it at once."""
    from cxr.core.locking import LockTimeout, file_lock

    lock = tmp_path / "registry.lock"
    probe = (
        "import sys; from pathlib import Path; from cxr.core.locking import file_lock\n"
        "with file_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    with holding(probe, str(lock)), pytest.raises(LockTimeout, match="pid"), file_lock(lock, timeout_s=0.5):
        pass
    with file_lock(lock, timeout_s=5):
        pass


# 6. Disk full or read-only state folder ---------------------------------------------------------


def test_unwritable_state_folder_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """A state folder that cannot be written (here: below a regular file, which fails for root too) is
    refused before any work. Checked: without the check in cxr.core.state_folder the CLI dies with a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CXR_HOME", str(blocker / "state"))

    assert main(["models"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: state folder {blocker / 'state'} is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_state_folder_is_one_clear_error(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    monkeypatch.setenv("CXR_HOME", str(home))
    try:
        assert main(["models"]) == 2
    finally:
        home.chmod(0o700)
    assert capsys.readouterr().err.strip().endswith("is not writable: Permission denied")


def test_disk_full_while_writing_batches_leaves_nothing_half_written(world, monkeypatch):
    """np.save writes half the array, then ENOSPC: no file of the split is left (not even the temporary
    one), no checksum vouches for anything, and a later call with space writes verified arrays.
    Checked: without the `finally: unlink` in cxr.core.atomic_files.write_atomically the .tmp file remains."""
    from cxr.data import batches as batches_stage

    split = _ingest_and_split(world)
    real_save = np.save

    def save_until_disk_full(handle, array):  # noqa: ANN001
        handle.write(b"\x93NUMPY" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batches_stage.np, "save", save_until_disk_full)
    out = world.home / "batches"
    with pytest.raises(OSError, match="No space left"):
        batches_stage.materialise_batches(split.split_path, out, image_size=32)
    assert [path.name for path in out.rglob("*") if path.is_file() and ".npy" in path.name] == []
    assert list(out.rglob("shard-*[0-9].json")) == []  # no shard record vouches for anything

    monkeypatch.setattr(batches_stage.np, "save", real_save)
    result = batches_stage.materialise_batches(split.split_path, out, image_size=32)
    assert result.is_intact()


# 7. Corrupt cache entries -----------------------------------------------------------------------


def test_corrupt_cache_entries_are_recomputed_not_loaded(prefect_harness, world):
    """After a clean run: a train shard's images are truncated, a byte is appended to model.keras and
    the Prefect result record of `evaluate` is truncated. The next run recomputes batches, train and
    evaluate and succeeds. Checked: without the intact check of mapped results in StageRunner.map the run
    fails on the truncated shard; without TrainResult.is_intact 'train' stays cached and evaluate fails with
    ModelError "changed since training"."""
    from prefect.settings import get_current_settings

    from flows.retrain import retrain

    first = retrain(world.config)
    images = next((world.home / "batches").glob("*/train/shard-*.images.npy"))
    images.write_bytes(images.read_bytes()[:200])
    with next((world.home / "models").glob("*/model.keras")).open("ab") as model:
        model.write(b"\0")
    storage = Path(get_current_settings().results.local_storage_path)
    evaluation_record = next(
        path
        for path in storage.iterdir()
        if path.is_file()
        and str(world.home) in (text := path.read_text(errors="replace"))
        and "cxr.evaluation.evaluate.EvaluationResult" in text
    )
    evaluation_record.write_text(evaluation_record.read_text()[:50])

    second = retrain(world.config)

    assert second["cached_tasks"][:4] == ["ingest-plan", "ingest-check", "ingest-assemble", "split"], second[
        "cached_tasks"
    ]
    # The truncated shard is rebuilt byte for byte, so the index over it may be reused (stamps hash bytes).
    assert not {"batches-shard", "train", "evaluate"} & set(second["cached_tasks"])
    assert second["data_digest"] == first["data_digest"]
    assert second["model_version"] >= first["model_version"]


# Untrusted inputs -------------------------------------------------------------------------------


def _write_lambda_model(folder: Path) -> Path:
    import keras

    folder.mkdir()
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t / 255.0)(inputs))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(folder / "model.keras")
    (folder / "model.json").write_text(
        json.dumps({"image_size": 32, "threshold": 0.5, "classes": ["pneumonia", "normal"]})
    )
    return folder / "model.keras"


def test_models_with_code_are_refused_by_predict_and_evaluate(prefect_harness, world, capsys):
    """A Lambda layer is code: both commands refuse the file (safe_mode) with one line and exit 2."""
    model = _write_lambda_model(world.home.parent / "unsafe")
    image = next(world.data.rglob("*.jpeg"))
    for args in (
        ["evaluate", "--model", str(model), "--data", str(world.data)],
        ["predict", str(image), "--model", str(model)],
    ):
        assert main([*args, "--json"]) == 2, args
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("error: ") and "safe" in line, line


def test_predict_reports_a_decompression_bomb_and_scores_the_rest(prefect_harness, world, capsys):
    """A PNG declaring 100000 x 100000 pixels is reported, never decoded; the good image is scored."""
    import struct
    import zlib

    from cxr.model.networks import build_model

    folder = world.home.parent / "model"
    folder.mkdir()
    build_model("seed", 32).save(folder / "model.keras")
    (folder / "model.json").write_text(
        json.dumps({"image_size": 32, "threshold": 0.5, "classes": ["pneumonia", "normal"]})
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = world.home.parent / "bomb.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    good = next(world.data.rglob("*.jpeg"))
    out = world.home.parent / "predictions.csv"

    assert (
        main(
            [
                "predict",
                str(bomb),
                str(good),
                "--model",
                str(folder / "model.keras"),
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = _last_json(capsys.readouterr().out)
    assert (summary["scored"], summary["failed"]) == (1, 1)
    assert "decompression_bomb" in out.read_text()


@pytest.mark.parametrize("escape", ["/etc", "{root}/../../etc"])
def test_event_data_outside_the_data_roots_is_refused(tmp_path, escape):
    root = tmp_path / "inbox"
    root.mkdir()
    with pytest.raises(ValueError, match="outside the allowed data roots"):
        RetrainConfig(data_dir=escape.format(root=root), data_roots=(str(root),), **TINY)


def test_on_new_data_deployment_confines_event_folders(tmp_path):
    """The event-triggered deployment must carry data_roots, so an event naming /etc is refused."""
    from deployments.serve import ON_NEW_DATA, build_deployments

    deployments = {deployment.name: deployment for deployment in build_deployments(str(tmp_path))}
    config = deployments[ON_NEW_DATA].triggers[0].parameters["config"]
    assert config.get("data_roots")
    with pytest.raises(ValueError, match="outside the allowed data roots"):
        RetrainConfig(**{**config, "data_dir": "/etc"})


def test_local_servers_bind_to_loopback_by_default(tmp_path, monkeypatch):
    """`cxr dashboard` and `cxr mlflow-ui` listen on 127.0.0.1 unless told otherwise."""
    from cxr.ops import server

    started = {}

    def fake_popen(command, **kwargs):  # noqa: ANN001, ANN003
        started.update(command=command, env=kwargs.get("env", {}))
        return SimpleNamespace(pid=-1)

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setattr(server, "is_healthy", lambda url, timeout_s=2.0: False)
    monkeypatch.setattr(server, "wait_until_healthy", lambda *args, **kwargs: None)
    monkeypatch.setattr(server.subprocess, "Popen", fake_popen)

    assert server.ensure_dashboard().startswith("http://127.0.0.1:")
    command = started["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert started["env"]["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    ui = server.mlflow_ui_command()
    assert ui[ui.index("--host") + 1] == "127.0.0.1"
