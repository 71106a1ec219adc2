"""Classification metrics with pneumonia as the positive class, and their bootstrap confidence intervals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxr.core.errors import DataError
from cxr.model.referral import says_pneumonia

# Metrics with a bootstrap interval (pr_auc omitted: average precision is costly to vectorise).
CI_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "auc")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (metric undefined)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _threshold_metrics(tp, fn, fp, tn) -> dict[str, np.ndarray]:  # noqa: ANN001 - counts, scalar or per-resample
    """Metrics from confusion counts; works on scalars and on arrays of bootstrap resamples alike."""
    sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fn + fp + tn),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _as_json_number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def check_inputs(is_pneumonia: np.ndarray, prob_pneumonia: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_pneumonia).astype(bool).ravel()
    p = np.asarray(prob_pneumonia, dtype=float).ravel()
    if y.size == 0 or y.shape != p.shape:
        raise DataError(f"need equal, non-empty label and probability arrays, got {y.shape} and {p.shape}")
    return y, p


def _outcomes(y: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of true/false positives/negatives, pneumonia being the positive class."""
    return {"tp": y & predicted, "fn": y & ~predicted, "fp": ~y & predicted, "tn": ~y & ~predicted}


def classification_metrics(is_pneumonia: np.ndarray, prob_pneumonia: np.ndarray, threshold: float) -> dict:
    """Metrics for 'pneumonia' as the positive class, predicted by the label rule (`says_pneumonia`).

    Undefined values (AUC with one class present, a ratio with an empty denominator) are None.
    `confusion` rows are the true class and columns the predicted class, both in CLASSES order.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # imported here: cached runs skip it

    y, p = check_inputs(is_pneumonia, prob_pneumonia)
    counts = {name: int(mask.sum()) for name, mask in _outcomes(y, says_pneumonia(p, threshold)).items()}
    metrics: dict[str, Any] = {k: _as_json_number(v) for k, v in _threshold_metrics(**counts).items()}
    both_classes = 0 < y.sum() < y.size
    metrics["auc"] = float(roc_auc_score(y, p)) if both_classes else None
    metrics["pr_auc"] = float(average_precision_score(y, p)) if both_classes else None
    confusion = [[counts["tp"], counts["fn"]], [counts["fp"], counts["tn"]]]
    metrics.update(threshold=float(threshold), n=int(y.size), confusion=confusion)
    return metrics


def _weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of resample weights (counts), by the Mann-Whitney statistic with tied ranks.

    AUC = sum over positives i of w_i * (negative weight below p_i + half the negative weight tied
    with p_i), over W_pos * W_neg. One sort serves all resamples: O(B * N).
    """
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted, w_sorted = p[order], y[order], weights[:, order]
    negative_weight = np.where(y_sorted, 0.0, w_sorted)
    cumulative = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(negative_weight, axis=1)], axis=1)
    tie_start = np.searchsorted(p_sorted, p_sorted, side="left")
    tie_end = np.searchsorted(p_sorted, p_sorted, side="right")
    below = cumulative[:, tie_start]
    tied = cumulative[:, tie_end] - below
    positive_weight = np.where(y_sorted, w_sorted, 0.0)
    wins = np.sum(positive_weight * (below + 0.5 * tied), axis=1)
    return _ratio(wins, positive_weight.sum(axis=1) * negative_weight.sum(axis=1))


# Resamples per block of the bootstrap: its arrays are BOOTSTRAP_BLOCK x (images in the split).
BOOTSTRAP_BLOCK = 100


def bootstrap_ci(
    is_pneumonia: np.ndarray,
    prob_pneumonia: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """95 % percentile bootstrap intervals of CI_METRICS; None where a metric is never defined.

    Resamples are drawn BOOTSTRAP_BLOCK at a time, so memory grows with the split, not n_boot times it.
    """
    y, p = check_inputs(is_pneumonia, prob_pneumonia)
    n = y.size
    rng = np.random.default_rng(seed)
    outcomes = {name: mask.astype(float) for name, mask in _outcomes(y, says_pneumonia(p, threshold)).items()}
    blocks: list[dict[str, np.ndarray]] = []
    for start in range(0, n_boot, BOOTSTRAP_BLOCK):
        count = min(BOOTSTRAP_BLOCK, n_boot - start)
        # Row b holds how often each image was drawn in resample b (multinomial counts).
        draws = rng.integers(0, n, size=(count, n)) + np.arange(count)[:, None] * n
        weights = np.bincount(draws.ravel(), minlength=count * n).reshape(count, n).astype(float)
        block = _threshold_metrics(**{name: weights @ mask for name, mask in outcomes.items()})
        block["auc"] = _weighted_auc(y, p, weights)
        blocks.append(block)
    intervals: dict[str, list[float] | None] = {}
    for name in CI_METRICS:
        samples = np.concatenate([block[name] for block in blocks])
        values = samples[~np.isnan(samples)]
        intervals[name] = np.percentile(values, [2.5, 97.5]).tolist() if values.size else None
    return intervals
