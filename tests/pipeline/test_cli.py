"""The `cxr` command line: JSON contracts and one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from cli.main import main

TRAIN_KEYS = {
    "model_name",
    "model_version",
    "champion",
    "metrics",
    "flow_run_id",
    "duration_s",
    "peak_rss_mib",
    "cached_tasks",
}
METRIC_KEYS = {"accuracy", "sensitivity", "specificity", "precision", "f1", "auc"}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_train_on_missing_folder_fails_with_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope")]) == 2
    assert _error_line(capsys) == f"error: data folder not found: {tmp_path / 'nope'}"


def test_unknown_model_name_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path), "--model", "resnet9000"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'resnet9000'" in capsys.readouterr().err


def test_train_on_folder_without_images_fails_clearly(prefect_harness, tmp_path, capsys):
    (tmp_path / "NORMAL").mkdir()
    assert main(["train", "--data", str(tmp_path), "--image-size", "32", "--epochs", "1"]) == 2
    assert _error_line(capsys).startswith("error: ")


def test_train_on_one_class_fails_clearly(prefect_harness, tiny_dataset, tmp_path, capsys):
    shutil.copytree(tiny_dataset / "train" / "NORMAL", tmp_path / "NORMAL")
    assert main(["train", "--data", str(tmp_path), "--image-size", "32", "--epochs", "1"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and "pneumonia" in line.lower()


def test_demo_data_and_ingest_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--n", "24", "--size", "96", "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    total = sum(sum(per_class.values()) for per_class in written["counts"].values())
    assert total == 24

    assert main(["ingest", "--data", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["files_found"] == report["accepted"] + report["quarantined"] == 24
    assert set(report["per_class"]) == {"pneumonia", "normal"}


def test_train_json_contract(prefect_harness, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "--model",
        "seed",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--json",
    ]
    assert main([*args, "--batch-size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) >= TRAIN_KEYS
    assert set(summary["metrics"]) >= METRIC_KEYS
    assert summary["model_name"] == "cxr-pneumonia" and summary["champion"] is True
    assert summary["duration_s"] > 0
    assert summary["peak_rss_mib"] > 100  # this process, TensorFlow loaded
    assert summary["executor"] == "threads"  # no Dask scheduler named


def test_a_stack_that_is_up_points_commands_at_it_unless_the_user_chose(tmp_path, monkeypatch):
    from cxr.ops import cluster, stack_security

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    stack_security.ensure_secrets(cluster.cluster_dir(), "postgresql://x")
    credentials = list(stack_security.client_env(cluster.cluster_dir()))
    for name in [*cluster.STACK_ENV, *credentials]:
        monkeypatch.setenv(name, "")  # recorded, so teardown also removes what use_stack_if_up sets
        monkeypatch.delenv(name)
    cluster.use_stack_if_up()  # no stack: nothing set
    assert not [name for name in [*cluster.STACK_ENV, *credentials] if name in os.environ]
    endpoints = {
        "prefect_api_url": "http://127.0.0.1:1/api",
        "mlflow_tracking_uri": "http://127.0.0.1:2",
        "dask_scheduler": "tcp://127.0.0.1:3",
    }
    cluster.endpoints_path().write_text(json.dumps(endpoints))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    monkeypatch.setenv("CXR_DASK_SCHEDULER", "tcp://elsewhere:8786")
    cluster.use_stack_if_up()
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///mine.db"
    assert "CXR_DASK_ADDRESS" not in os.environ  # the flow reads the user's CXR_DASK_SCHEDULER
    # The stack's credentials go to the stack's servers only: here its Prefect server, not the user's others.
    assert (
        os.environ["PREFECT_API_AUTH_STRING"]
        == stack_security.client_env(cluster.cluster_dir())["PREFECT_API_AUTH_STRING"]
    )
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY" not in os.environ
