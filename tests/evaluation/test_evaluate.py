"""Evaluation metrics, bootstrap intervals, plots and the report."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxr.core.errors import DataError
from cxr.data.batches import write_batches
from cxr.data.split_images import resized
from cxr.evaluation import domain as domain_module
from cxr.evaluation import evaluate as evaluate_module
from cxr.evaluation import metrics as metrics_module
from cxr.evaluation.evaluate import evaluate_model, predict_split, score_images
from cxr.evaluation.metrics import bootstrap_ci, classification_metrics
from cxr.evaluation.plots import write_plots
from tests.helpers.toy_models import SIZE, bright_dark_images, brightness_model, save_model

KNOWN_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0], dtype=bool)
KNOWN_P = np.array([0.9, 0.8, 0.4, 0.65, 0.3, 0.7, 0.1, 0.2, 0.55, 0.5, 0.95, 0.05])


def test_metrics_match_sklearn():
    metrics = classification_metrics(KNOWN_Y, KNOWN_P, threshold=0.5)
    predicted = KNOWN_P >= 0.5
    assert metrics["accuracy"] == pytest.approx(accuracy_score(KNOWN_Y, predicted))
    assert metrics["sensitivity"] == pytest.approx(recall_score(KNOWN_Y, predicted))
    assert metrics["specificity"] == pytest.approx(recall_score(~KNOWN_Y, ~predicted))
    assert metrics["precision"] == pytest.approx(precision_score(KNOWN_Y, predicted))
    assert metrics["npv"] == pytest.approx(precision_score(~KNOWN_Y, ~predicted))
    assert metrics["f1"] == pytest.approx(f1_score(KNOWN_Y, predicted))
    assert metrics["auc"] == pytest.approx(roc_auc_score(KNOWN_Y, KNOWN_P))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(KNOWN_Y, KNOWN_P))
    # rows = true [pneumonia, normal], columns = predicted in the same order
    assert metrics["confusion"] == confusion_matrix(KNOWN_Y, predicted, labels=[True, False]).tolist()
    assert (metrics["n"], metrics["threshold"]) == (12, 0.5)


def test_one_class_gives_undefined_metrics_not_a_crash(tmp_path):
    y = np.ones(6, dtype=bool)
    p = np.linspace(0.1, 0.9, 6)
    metrics = classification_metrics(y, p, 0.5)
    assert metrics["auc"] is None and metrics["pr_auc"] is None and metrics["specificity"] is None
    assert metrics["sensitivity"] == pytest.approx(0.5)
    json.dumps(metrics, allow_nan=False)  # JSON-safe: no NaN anywhere
    ci = bootstrap_ci(y, p, 0.5, n_boot=50)
    assert ci["auc"] is None and ci["specificity"] is None and ci["sensitivity"] is not None
    plots = write_plots(y, p, metrics, tmp_path)
    assert all(path.stat().st_size > 0 for path in plots.values())


def test_mismatched_inputs_raise_data_error():
    with pytest.raises(DataError):
        classification_metrics(np.ones(3), np.ones(4), 0.5)


def test_bootstrap_interval_contains_point_estimate_and_is_fast():
    rng = np.random.default_rng(3)
    y = rng.random(1000) < 0.6
    p = np.clip(0.35 * y + 0.65 * rng.random(1000), 0, 1).round(2)  # rounded: plenty of ties
    metrics = classification_metrics(y, p, 0.5)
    started = time.perf_counter()
    ci = bootstrap_ci(y, p, 0.5, n_boot=1000, seed=1)
    assert time.perf_counter() - started < 2.0
    for name, (low, high) in ci.items():
        assert low <= metrics[name] <= high, name
        assert high - low < 0.15, name
    assert bootstrap_ci(y, p, 0.5, n_boot=200, seed=1) == bootstrap_ci(y, p, 0.5, n_boot=200, seed=1)


def test_bootstrap_in_blocks_gives_the_intervals_of_one_block(monkeypatch):
    """Blocks bound the memory (block x images); the resamples, and so the intervals, stay the same."""
    rng = np.random.default_rng(5)
    y, p = rng.random(301) < 0.6, rng.random(301).round(2)
    blocked = bootstrap_ci(y, p, 0.5, n_boot=250, seed=2)
    monkeypatch.setattr(metrics_module, "BOOTSTRAP_BLOCK", 7)
    assert bootstrap_ci(y, p, 0.5, n_boot=250, seed=2) == blocked
    monkeypatch.setattr(metrics_module, "BOOTSTRAP_BLOCK", 250)
    assert bootstrap_ci(y, p, 0.5, n_boot=250, seed=2) == blocked


def test_bootstrap_auc_matches_sklearn_on_a_resample():
    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.5
    p = rng.random(200).round(1)
    drawn = rng.integers(0, 200, 200)
    weights = np.bincount(drawn, minlength=200)[None].astype(float)
    assert metrics_module._weighted_auc(y, p, weights)[0] == pytest.approx(roc_auc_score(y[drawn], p[drawn]))


TOY_METADATA = {"image_size": SIZE, "threshold": 0.5}


def test_score_images_reads_the_pneumonia_output_and_resizes_as_serving():
    images, labels = bright_dark_images(20)
    prob = score_images(brightness_model(40.0), TOY_METADATA, images).p_pneumonia
    assert prob.shape == (20,)
    assert prob[labels == 0].mean() > prob[labels == 1].mean()
    larger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 64 px images, 32 px model
    from_larger = score_images(brightness_model(40.0), TOY_METADATA, larger).p_pneumonia
    # Resized as serving resizes an array (Pillow, bilinear), not by TensorFlow.
    as_served = score_images(brightness_model(40.0), TOY_METADATA, resized(larger, SIZE)[..., None])
    np.testing.assert_allclose(from_larger, as_served.p_pneumonia, atol=1e-6)
    assert np.allclose(from_larger, prob, atol=2e-2)
    # A model saved with its classes the other way round: P(pneumonia) is its second output.
    swapped = score_images(
        brightness_model(40.0), {**TOY_METADATA, "classes": ["normal", "pneumonia"]}, images
    )
    np.testing.assert_allclose(swapped.p_pneumonia, 1 - prob, atol=1e-6)
    with pytest.raises(DataError):
        score_images(brightness_model(1.0), TOY_METADATA, images[..., 0])


def test_scoring_traces_once_per_model_and_does_not_keep_it_alive():
    import gc
    import weakref

    images, _ = bright_dark_images(20)
    model = brightness_model(40.0)
    first = score_images(model, TOY_METADATA, images).p_pneumonia
    again = score_images(model, TOY_METADATA, images[:5]).p_pneumonia
    np.testing.assert_allclose(first, model.predict(images, verbose=0)[:, 0], atol=1e-6)
    np.testing.assert_allclose(again, first[:5], atol=1e-6)
    assert domain_module._forward_pass(model, None).experimental_get_tracing_count() == 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_predict_split_streams_shards_in_order_and_resizes(tmp_path):
    images, labels = bright_dark_images(20)
    larger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 64 px shards, 32 px model
    batches = write_batches(tmp_path / "batches", {"test": (larger, labels)}, shard_images=6)
    prob, is_pneumonia = predict_split(brightness_model(40.0), batches, "test")
    np.testing.assert_array_equal(is_pneumonia, labels == 0)
    assert np.allclose(
        prob, score_images(brightness_model(40.0), TOY_METADATA, larger).p_pneumonia, atol=1e-6
    )


def test_evaluate_model_writes_report_and_plots(tmp_path):
    images, labels = bright_dark_images(40)
    model_path = save_model(brightness_model(40.0), tmp_path / "model", threshold=0.5)
    batches = write_batches(tmp_path / "batches", {"test": (images, labels)}, shard_images=16)
    result = evaluate_model(model_path, batches, out_dir=tmp_path / "report")
    assert result.n == 40 and result.split == "test"
    assert result.metrics["auc"] > 0.9 and result.metrics["threshold"] == 0.5
    assert set(result.plots) == {"confusion-matrix", "roc-curve", "pr-curve"}
    for path in result.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = result.report_path.read_text()
    assert "| auc |" in report and "](roc-curve.png)" in report and "| pneumonia |" in report
    assert evaluate_module.sha256_file(model_path) == result.model_sha256
    overridden = evaluate_model(model_path, batches, out_dir=tmp_path / "report2", threshold=0.99)
    assert overridden.metrics["threshold"] == 0.99
    assert overridden.metrics["sensitivity"] < result.metrics["sensitivity"]
    json.loads(result.model_dump_json())
