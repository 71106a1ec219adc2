"""The whole retrain flow on a small synthetic sample, twice: the second run reuses every task."""

from __future__ import annotations

import json

from cxr.config.params import RetrainConfig
from cxr.core.memory import peak_rss_mib
from tests.helpers.prefect_artifacts import artifact_keys

INGEST_STEPS = ["ingest-plan", "ingest-check", "ingest-assemble"]
BATCHES_STEPS = ["batches-plan", "batches-shard", "batches-assemble"]
STAGES = [*INGEST_STEPS, "split", *BATCHES_STEPS, "train", "domain", "domain-drift", "evaluate", "register"]

STAGE_ARTIFACTS = {
    "data-report",
    "quarantine",
    "split-summary",
    "training-history",
    "training-summary",
    "domain-score",
    "data-drift",
    "metrics",
    "evaluation-report",
    "roc-curve",
    "risk-coverage",
    "promotion-decision",
    "run-summary",
}


def test_retrain_registers_a_champion_then_reuses_every_task(
    prefect_harness, tiny_dataset, isolated_registry
):
    from cxr.model.loading import resolve_model
    from cxr.registry.versions import list_versions
    from flows.retrain import retrain

    # A seed of its own: other tests train on the same sample, and only ingest may be shared with them.
    train = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16, "seed": 11}
    # Fewer fitting images than training images: the rest of them calibrate the domain threshold too.
    config = RetrainConfig(
        data_dir=str(tiny_dataset), split={"seed": 11}, train=train, domain={"fit_images": 20}
    )
    first = retrain(config)

    assert set(first["cached_tasks"]) <= set(INGEST_STEPS)
    assert first["champion"] is True
    assert str(first["model_version"]) == "1"
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"):
        value = first["metrics"][key]
        assert value is None or 0.0 <= value <= 1.0, key
    assert sum(sum(row) for row in first["metrics"]["confusion"]) == first["metrics"]["n"] > 0
    point = first["operating_point"]  # the test metrics are at the model's default operating point
    assert first["metrics"]["operating_point"] == point and point in first["operating_points"]
    assert (
        first["metrics"]["threshold"] == first["operating_points"][point]["threshold"] == first["threshold"]
    )
    versions = list_versions("cxr-pneumonia", isolated_registry)
    assert [v["aliases"] for v in versions] == [["champion"]]
    assert versions[0]["data_digest"] == first["data_digest"]
    # The registered model carries the domain score fitted in the run (numbers, nothing pickled).
    registered = resolve_model(first["model_uri"], isolated_registry).with_name("model.json")
    domain = json.loads(registered.read_text())["domain"]
    assert domain["threshold"] > 0 and domain["layer"] == "pool2"
    assert 0 <= domain["summary"]["test_flagged_share"] <= 1
    split = {name: sum(counts.values()) for name, counts in first["split_counts"].items()}
    assert domain["summary"]["fit_images"] == 20
    assert json.loads(registered.read_text())["min_image_side"] == config.ingest.min_image_side
    assert domain["summary"]["calibration_images"] == min(split["valid"], 20) + min(split["train"] - 20, 20)
    # Each stage's peak memory is reported, none above the process's.
    assert {"ingest-check", "batches-shard", "train", "domain", "evaluate", "register"} <= set(
        first["peak_rss_mib_by_task"]
    )
    assert 0 < max(first["peak_rss_mib_by_task"].values()) <= peak_rss_mib()
    # A folder's first ingest has nothing earlier to drift from: no new images, no alert.
    drift = first["data_drift"]
    assert drift["new_images"] == 0 and drift["share"] is None and not drift["alert"]

    second = retrain(config)
    # The champion is now the run's own model: it judged the new images, so the drift is reused too.
    assert second["cached_tasks"] == STAGES
    assert second["data_drift"] == first["data_drift"]
    assert second["model_version"] == first["model_version"]
    assert second["metrics"] == first["metrics"]
    assert len(list_versions("cxr-pneumonia", isolated_registry)) == 1
    # Even a fully cached run shows every stage's results on its own dashboard page.
    assert artifact_keys(second["flow_run_id"]) >= STAGE_ARTIFACTS
    assert artifact_keys(first["flow_run_id"]) >= STAGE_ARTIFACTS


def test_changed_training_config_reuses_data_stages_only(prefect_harness, tiny_dataset, isolated_registry):
    from flows.retrain import retrain

    train = {"model": "seed", "image_size": 32, "epochs": 1, "batch_size": 16}
    base = RetrainConfig(data_dir=str(tiny_dataset), train=train)
    retrain(base)
    changed = retrain(
        RetrainConfig(data_dir=str(tiny_dataset), split={"seed": 7}, train={**train, "seed": 7})
    )
    # New seeds re-split and retrain, but the folder's ingest is reused.
    assert changed["cached_tasks"] == INGEST_STEPS
