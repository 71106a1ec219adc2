"""`cxr train --external`: the flow scores each external set with the challenger and the champion, shows it in
the JSON, on the run's dashboard page, in the MLflow run and the model card, and gates on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from cxr.core import mlflow_store
from cxr.model import loading
from tests.helpers.prefect_artifacts import artifact_keys


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from cxr.data.demo_data import write_demo_dataset

    folder = tmp_path_factory.mktemp("site") / "chest_xray"
    write_demo_dataset(folder, n=24, size=64, seed=5)
    return folder


def _train(capsys, *args: str) -> dict:
    base = ["train", "--model", "seed", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--json"]
    assert main([*base, *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_scores_external_sets_with_challenger_and_champion(
    prefect_harness, tiny_dataset, site, isolated_registry, capsys
):
    common = ("--data", str(tiny_dataset), "--external", f"site={site}")
    first = _train(capsys, *common, "--seed", "21")

    scored = first["external"]["site"]
    assert scored["champion"] is None and first["champion"] is True  # nothing to compare with yet
    assert scored["n"] == scored["challenger"]["metrics"]["n"] > 0 and len(scored["data_digest"]) == 64
    assert set(scored["challenger"]["ci"]) >= {"auc", "sensitivity", "specificity"}
    assert first["operating_point"] in scored["challenger"]["operating_points"]
    client = mlflow_store.client(isolated_registry)
    metrics = client.get_run(first["mlflow_run_id"]).data.metrics
    assert metrics["external.site.auc"] == scored["challenger"]["metrics"]["auc"]
    assert "external-site" in artifact_keys(first["flow_run_id"])

    second = _train(capsys, *common, "--seed", "22", "--calibrate-on", "site")

    scored = second["external"]["site"]
    assert scored["champion_version"] == 1 and scored["champion"]["metrics"]["n"] == scored["n"]
    decision = second["decision"]
    assert set(decision["external"]["site"]) == {"challenger", "champion"}
    assert decision["reason"].startswith("challenger") or "external set site" in decision["reason"]
    if decision["promoted"]:
        assert "site auc" in decision["reason"]
    # --calibrate-on: the site's point is the registered model's default, and the test metrics use it.
    assert second["operating_point"] == second["metrics"]["operating_point"] == "site:sensitivity-0.95"
    _, metadata = loading.load_model_with_metadata(second["model_uri"], isolated_registry)
    assert metadata["default_operating_point"] == "site:sensitivity-0.95"
    assert metadata["site_calibrations"]["site"]["n"] == scored["n"]
    # The referral band was refitted on the site's images around the site's threshold.
    band = metadata["referral"]
    assert band["fitted_on"] == "site site" and band["threshold"] == metadata["threshold"]
    assert band["n"] == scored["n"] and band["low"] <= metadata["threshold"] <= band["high"]
    # The gate saw both models' coverage at target outside.
    assert {"coverage_at_target"} <= set(decision["external"]["site"]["challenger"])
    assert {"coverage_at_target"} <= set(decision["external"]["site"]["champion"])
    run = client.get_run(second["mlflow_run_id"])
    assert run.data.metrics["external.site.champion.auc"] == scored["champion"]["metrics"]["auc"]
    card = (Path(client.download_artifacts(run.info.run_id, "model_card.md"))).read_text()
    assert "## External validation" in card and "champion v1" in card
    assert "## Referral (on the `test` split)" in card and "Fitted band: refer P(pneumonia)" in card
