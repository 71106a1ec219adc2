"""The registry is the truth: live champion answers, re-registration after a lost store, links both ways,
and the flow's champion working where this repository is absent."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from cli.main import main
from cxr import REGISTERED_MODEL_NAME as NAME
from cxr.config.params import RetrainConfig
from cxr.core import mlflow_store
from cxr.registry import versions
from tests.helpers.isolated import isolated_python, run_isolated
from tests.helpers.prefect_artifacts import artifact_keys


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_models_on_a_missing_or_empty_registry_says_where_it_looked(store, capsys):
    database = mlflow_store.sqlite_file(store)
    assert main(["models"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"no MLflow registry at {store} (nothing registered yet; `cxr train` creates it)"
    )
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (listed["versions"], listed["registry_exists"], listed["tracking_uri"]) == ([], False, store)
    assert not database.exists()  # looking did not create it

    database.parent.mkdir(parents=True)
    mlflow_store.client(store).create_registered_model("other-model")
    assert main(["models"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"no versions of {NAME} in the registry at {store}; it holds other-model"
    )


PREDICT_BYTES = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
paths = json.loads(sys.argv[2])
model = mlflow.pyfunc.load_model("models:/cxr-pneumonia@champion")
frame = model.predict(pd.DataFrame({"image": [open(path, "rb").read() for path in paths]}))
print(json.dumps(frame[["label", "status"]].to_dict("records")))
"""


def test_registry_truth_across_cached_reruns(prefect_harness, tiny_dataset, store, tmp_path, capsys):
    from flows.retrain import retrain

    train = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16, "seed": 23}
    config = RetrainConfig(data_dir=str(tiny_dataset), split={"seed": 23}, train=train)
    first = retrain(config)
    assert (first["model_version"], first["champion"], first["champion_version"]) == (1, True, 1)

    # Links both ways: the MLflow run names the flow run; the run holds the card, summary and TensorBoard logs.
    client = mlflow_store.client(store)
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["prefect.flow_run_id"] == first["flow_run_id"]
    assert run.data.tags["prefect.flow_run_name"].startswith("retrain-")
    assert run.data.tags["prefect.trigger"] == "manual"
    assert {"model_card.md", "model_summary.txt", "tensorboard"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }

    # A version moved by hand: a fully cached rerun reports the live alias, not its cached answer.
    version = client.get_model_version(NAME, "1")
    client.create_model_version(
        NAME, source=version.source, run_id=version.run_id, tags={"model_sha256": "other"}
    )
    versions.promote(NAME, 2, "by hand", store)
    moved = retrain(config)
    assert "register" in moved["cached_tasks"]
    assert "model-card" in artifact_keys(first["flow_run_id"]) & artifact_keys(moved["flow_run_id"])
    assert (moved["model_version"], moved["champion"], moved["champion_version"]) == (1, False, 2)
    versions.rollback(NAME, "back", store)
    back = retrain(config)
    assert (back["champion"], back["champion_version"]) == (True, 1)

    # The store lost (replaced by an empty one, as a deleted and recreated store looks to this process,
    # whose MLflow client keeps the old file open): the cached registration is checked, found gone, and
    # the model registered again.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    mlflow_store.client(empty).search_experiments()
    shutil.copy(mlflow_store.sqlite_file(empty), mlflow_store.sqlite_file(store))
    again = retrain(config)
    assert "register" not in again["cached_tasks"] and "train" in again["cached_tasks"]
    assert (again["model_version"], again["champion"]) == (1, True)
    assert client.get_model_version(NAME, "1").tags["model_sha256"] == version.tags["model_sha256"]

    # The champion the flow registered, loaded by stock MLflow where this repository cannot be imported,
    # labels the test images as `cxr predict` does.
    files = sorted(str(path) for path in (tiny_dataset / "test").rglob("*.jpeg"))[:12]
    out_csv = tmp_path / "predictions.csv"
    assert main(["predict", *files, "--out", str(out_csv)]) == 0
    expected = pd.read_csv(out_csv)
    work = tmp_path / "isolated"
    work.mkdir()
    python = isolated_python(tmp_path / "venv")
    served = json.loads(
        run_isolated(python, PREDICT_BYTES, store, json.dumps(files), cwd=work).strip().splitlines()[-1]
    )
    assert [row["label"] for row in served] == list(expected["label"])
    assert {row["status"] for row in served} == {"ok"}
