"""Data drift: the share of a run's new images out of the model's domain, its metric, warning and event."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr.data.manifests import write_new_files
from cxr.evaluation.drift import NO_NEW_IMAGES, DriftResult, measure_drift
from tests.helpers.domain_cases import add_domain_score, blob_scenes
from tests.helpers.toy_models import SIZE, write_blob_model, write_png


@pytest.fixture(scope="module")
def guarded_model(tmp_path_factory) -> Path:
    folder = write_blob_model(tmp_path_factory.mktemp("guarded"))
    add_domain_score(folder, blob_scenes(120, SIZE, seed=0), blob_scenes(100, SIZE, seed=1), quantile=0.99)
    return folder / "model.keras"


@pytest.fixture
def new_images(tmp_path) -> dict[str, list[str]]:
    """Four images like the model's own and two inverted ones, as files."""
    scenes = blob_scenes(4, SIZE, seed=9)
    usual = [str(write_png(tmp_path / f"usual{index}.png", scene)) for index, scene in enumerate(scenes)]
    odd = [
        str(write_png(tmp_path / f"inverted{index}.png", 255 - scene))
        for index, scene in enumerate(scenes[:2])
    ]
    return {"usual": usual, "odd": odd}


def test_drift_counts_the_new_images_out_of_domain(guarded_model, new_images):
    paths = new_images["usual"] + new_images["odd"]
    drift = measure_drift(paths, guarded_model, "models:/x@champion", data_dir="/inbox", alert_share=0.1)
    assert drift.new_images == 6 and drift.out_of_domain == 2 and drift.share == pytest.approx(2 / 6)
    assert drift.alert  # 33 % > 10 %
    table = drift.artifacts[0].markdown
    assert all(path in table for path in new_images["odd"]) and not any(
        p in table for p in new_images["usual"]
    )
    calm = measure_drift(new_images["usual"], guarded_model, "m", data_dir="/inbox", alert_share=0.1)
    assert calm.share == 0.0 and not calm.alert


def test_a_model_without_domain_score_judges_nothing(tmp_path, new_images):
    model = write_blob_model(tmp_path / "plain") / "model.keras"
    drift = measure_drift(new_images["odd"], model, "m", data_dir="/inbox", alert_share=0.1)
    assert drift.share is None and drift.out_of_domain is None and not drift.alert
    nothing_new = measure_drift([], tmp_path / "never-loaded.keras", "m", data_dir="/inbox", alert_share=0.1)
    assert nothing_new.new_images == 0 and nothing_new.share is None and nothing_new.note == NO_NEW_IMAGES
    assert NO_NEW_IMAGES in nothing_new.artifacts[0].markdown  # every run shows its drift artifact


def test_new_files_are_the_accepted_ones_the_ingest_checked(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"path": ["/d/a.png", "/d/b.png", "/d/c.png"]}).to_parquet(manifest)
    listed = write_new_files(manifest, {"/d/b.png", "/d/quarantined.png"})
    assert listed.read()["path"].tolist() == ["/d/b.png"] and listed.rows == 1


def test_report_logs_the_metric_and_posts_the_event_above_the_share(
    prefect_harness, isolated_registry, monkeypatch
):
    import mlflow
    from prefect import flow

    from cxr.core.mlflow_store import client
    from cxr.registry.model_events import DATA_DRIFT_EVENT
    from cxr.registry.versions import ensure_experiment
    from tasks import domain

    posted = []
    monkeypatch.setattr(domain, "post_model_event", lambda *args: posted.append(args))
    mlflow.set_tracking_uri(isolated_registry)
    with mlflow.start_run(experiment_id=ensure_experiment(isolated_registry)) as run:
        run_id = run.info.run_id
    base = {"data_dir": "/inbox", "new_images": 10, "model_uri": "m", "alert_share": 0.2}

    @flow
    def report(drift: DriftResult) -> dict:
        return domain.report_drift(drift, run_id, "cxr-pneumonia")

    quiet = report(DriftResult(**base, out_of_domain=1, share=0.1))
    assert not quiet["alert"] and posted == []
    loud = report(DriftResult(**base, out_of_domain=3, share=0.3))
    assert loud["alert"]
    [(event, model_name, payload)] = posted
    assert (event, model_name) == (DATA_DRIFT_EVENT, "cxr-pneumonia")
    assert (
        payload["out_of_domain"] == 3
        and payload["share_percent"] == 30.0
        and payload["alert_percent"] == 20.0
    )
    history = client(isolated_registry).get_metric_history(run_id, domain.DRIFT_METRIC)
    assert [point.value for point in history] == [0.1, 0.3]
