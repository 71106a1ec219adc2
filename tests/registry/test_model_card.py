"""The model card's content and the Prefect <-> MLflow run links."""

from __future__ import annotations

import uuid

import numpy as np
from prefect import flow

from cxr.config.params import ReferralTargets
from cxr.model.referral import ReferralBand
from cxr.registry.model_card import KNOWN_LIMITS, ModelCard, PointResult
from cxr.registry.run_links import flow_run_tags, mlflow_run_url

METRICS = {"sensitivity": 0.95, "specificity": 0.8, "accuracy": 0.9, "auc": 0.97, "pr_auc": 0.98}


def card(**overrides) -> ModelCard:
    fields = {
        "model_name": "cxr-pneumonia",
        "version": 3,
        "architecture": "default",
        "model_sha256": "ab" * 32,
        "image_size": 160,
        "data_dir": "/data/chest_xray",
        "data_digest": "0123456789abcdef0123",
        "images": {"accepted": 100, "quarantined": 2},
        "split_counts": {"train": {"pneumonia": 50, "normal": 20}, "test": {"pneumonia": 20, "normal": 10}},
        "evaluation_split": "test",
        "evaluation_n": 30,
        "operating_points": {
            "screening": PointResult(
                threshold=0.1, rule="sensitivity >= 0.97", metrics=METRICS, ci={"sensitivity": [0.9, 0.99]}
            ),
            "balanced": PointResult(threshold=0.5, metrics={**METRICS, "specificity": 0.9}),
        },
        "default_operating_point": "balanced",
        "links": {"MLflow run": "`abc123`"},
    }
    return ModelCard(**{**fields, **overrides})


def test_card_covers_data_metrics_use_and_limits():
    text = card().markdown()
    assert text.startswith("# Model card: cxr-pneumonia v3")
    assert "| train | 50 | 20 | 70 |" in text and "| test | 20 | 10 | 30 |" in text
    assert "| screening | 0.1000 | 0.950 [0.900, 0.990] | 0.800 |" in text
    assert "| balanced (default) | 0.5000 | 0.950 | 0.900 |" in text
    assert "auc 0.970" in text and "`screening`: sensitivity >= 0.97" in text
    assert "## Intended use" in text and all(limit in text for limit in KNOWN_LIMITS)
    assert "Not measured for this version" in text and "MLflow run: `abc123`" in text


def test_card_shows_shift_results_when_given():
    text = card(shift=[{"shift": "gamma", "auc": 0.91, "sensitivity": 0.88, "specificity": 0.7}]).markdown()
    assert "| gamma | 0.910 | 0.880 | 0.700 | - |" in text and "Not measured" not in text


def test_card_counts_the_reviewed_images_it_learned_from():
    assert "reviewers labelled" not in card().markdown()
    reviewed = {"images": 7, "in_train": 5, "in_valid": 2, "in_test": 0, "answered_differently": 3}
    text = card(reviewed=reviewed).markdown()
    assert "Learned from 7 images that reviewers labelled" in text
    assert "(5 train, 2 valid, 0 test)" in text and "answered 3 of them differently" in text


def test_flow_run_tags_name_the_run(prefect_harness):
    @flow(name="links-probe", flow_run_name="probe-run")
    def probe(config: dict) -> dict:
        return flow_run_tags()

    tags = probe({"trigger": "nightly"})
    uuid.UUID(tags["prefect.flow_run_id"])
    assert tags["prefect.flow_run_name"] == "probe-run" and tags["prefect.flow_name"] == "links-probe"
    assert tags["prefect.trigger"] == "nightly" and tags["prefect.deployment"] == "none (run directly)"
    assert tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{tags['prefect.flow_run_id']}")


def test_no_tags_outside_a_flow_run():
    assert flow_run_tags() == {}


def test_mlflow_run_url_only_for_a_server():
    assert (
        mlflow_run_url("http://127.0.0.1:5000/", "1", "r") == "http://127.0.0.1:5000/#/experiments/1/runs/r"
    )
    assert mlflow_run_url("sqlite:///x/mlflow.db", "1", "r") is None


def test_card_of_a_model_with_named_points(tmp_path):
    import json

    from cxr.evaluation.evaluate import EvaluationResult
    from cxr.model.training import TrainResult
    from cxr.registry.mlflow_run import model_card

    screening = {"threshold": 0.2, "rule": "sensitivity >= 0.95", "sensitivity": 0.96, "specificity": 0.7}
    screening |= {"sensitivity_ci": [0.93, 0.98], "specificity_ci": [0.6, 0.8]}
    metadata = {
        "image_size": 32,
        "operating_points": {
            "sensitivity-0.95": screening,
            "balanced": {"threshold": 0.6, "rule": "Youden's J"},
        },
        "default_operating_point": "sensitivity-0.95",
    }
    (tmp_path / "model.json").write_text(json.dumps(metadata))
    train = TrainResult(
        model_path=str(tmp_path / "model.keras"),
        model_sha256="ab" * 32,
        metadata_path=str(tmp_path / "model.json"),
        model_name="default",
        image_size=32,
        threshold=0.2,
        threshold_rule="sensitivity >= 0.95",
        epochs_run=1,
        best_epoch=1,
        resumed_from_epoch=0,
        device={"kind": "cpu"},
        history={},
        train_seconds=1.0,
        images_per_second=1.0,
        valid_metrics={},
    )
    evaluation = EvaluationResult(
        metrics={**METRICS, "threshold": 0.2},
        ci={"sensitivity": [0.9, 0.99]},
        plots={},
        report_path=tmp_path / "report.md",
        split="test",
        n=30,
        model_sha256="ab" * 32,
        operating_point="sensitivity-0.95",
        operating_points={
            "balanced": {"threshold": 0.6, "accuracy": 0.85, "sensitivity": 0.8, "specificity": 0.9}
        },
    )
    lineage = {
        "data_dir": "/d",
        "data_digest": "a" * 16,
        "split_counts": {"test": {"pneumonia": 20, "normal": 10}},
    }
    text = model_card("cxr-pneumonia", 4, train, evaluation, lineage, {}).markdown()
    assert "| sensitivity-0.95 (default) | 0.2000 | 0.950 [0.900, 0.990] | 0.800 |" in text
    assert "| balanced | 0.6000 | 0.800 | 0.900 | 0.850 | - |" in text
    assert "`sensitivity-0.95`: sensitivity >= 0.95; validation sensitivity 0.960 [0.930, 0.980]" in text


def test_card_shows_the_band_the_answered_rates_and_the_curve():
    from cxr.evaluation.risk_coverage import referral_summary

    p = np.array([0.05, 0.1, 0.3, 0.45, 0.55, 0.7, 0.9, 0.95])
    y = np.array([False, False, True, False, True, False, True, True])
    summary = referral_summary(y, p, 0.5, ReferralBand(low=0.4, high=0.6), ReferralTargets())
    band = {"low": 0.4, "high": 0.6, "referred_share": 0.25, "n": 8, "fitted_on": "validation split"}
    text = card(referral={"band": band, **summary}).markdown()
    assert "## Referral (on the `test` split)" in text and "| coverage | 0.7500 [" in text
    assert "| coverage | sensitivity | specificity | accuracy | low | high |" in text
    assert (
        "Fitted band: refer P(pneumonia) in [0.4000, 0.6000): 25.0% of 8 images of the validation split"
        in text
    )
    unbanded = card(
        referral={"band": None, **referral_summary(y, p, 0.5, None, ReferralTargets())}
    ).markdown()
    assert "no referral band" in unbanded and "answers every in-domain image alone" in unbanded
    assert "recorded no coverage" in card().markdown()
