"""Operating points: named decision thresholds on P(pneumonia), each chosen on the validation split.

A threshold tuned to a sensitivity target on an in-distribution validation split transfers badly to
images from another hospital: with a 95 % margin on sensitivity it sits so low that, once the scanner
changes, many healthy children score above it. So every model stores several points, each with the
validation sensitivity and specificity it reached and their 95 % Wilson intervals, and names the
default (`DEFAULT_OPERATING_POINT`, chosen by the shift measurements in docs/model.md).

Stored in `model.json` (and read by evaluation, prediction and the MLflow model) as
    operating_points: {name: {threshold, rule, sensitivity, specificity, sensitivity_ci, specificity_ci}}
    default_operating_point: name
    calibration: {method: "temperature", temperature, valid_nll, valid_nll_calibrated}
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from cxr.core.errors import DataError, ModelError
from cxr.model.thresholds import SENSITIVITY_CONFIDENCE_Z, choose_threshold, wilson_lower_bound

HIGH_SENSITIVITY = "high-sensitivity"
SENSITIVITY_95 = "sensitivity-0.95"
BALANCED = "balanced"
PROBABILITY_HALF = "probability-0.5"
# Under a held-out acquisition family (docs/model.md "Operating points") this point kept sensitivity above 0.95
# with the best specificity; the 95 %-margin point and Youden's J gave up specificity, 0.5 sensitivity.
DEFAULT_OPERATING_POINT = SENSITIVITY_95
# Two-sided 95 % intervals for the rates stored with each point.
CI_Z = 1.96
# Probabilities are clipped this far from 0 and 1 before taking logits (a saturated softmax).
_EPSILON = 1e-7
# The operating point a model without named points gets from its single `threshold`.
SINGLE_POINT = "default"


class OperatingPoint(BaseModel):
    """A threshold on P(pneumonia) and the validation rates it reached, with 95 % Wilson intervals."""

    threshold: float
    rule: str
    sensitivity: float
    specificity: float
    sensitivity_ci: tuple[float, float]
    specificity_ci: tuple[float, float]


def wilson_interval(successes: int, n: int, z: float = CI_Z) -> tuple[float, float]:
    """Two-sided Wilson score interval of a binomial proportion."""
    low = float(wilson_lower_bound(np.asarray(successes, dtype=float), n, z))
    high = 1.0 - float(wilson_lower_bound(np.asarray(n - successes, dtype=float), n, z))
    return round(low, 6), round(high, 6)


def point_at(p: np.ndarray, y: np.ndarray, threshold: float, rule: str) -> OperatingPoint:
    predicted = p >= threshold
    true_positives, true_negatives = int((predicted & y).sum()), int((~predicted & ~y).sum())
    positives, negatives = int(y.sum()), int((~y).sum())
    return OperatingPoint(
        threshold=float(threshold),
        rule=rule,
        sensitivity=true_positives / positives,
        specificity=true_negatives / negatives,
        sensitivity_ci=wilson_interval(true_positives, positives),
        specificity_ci=wilson_interval(true_negatives, negatives),
    )


def _roc(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) from high to low threshold, each threshold halfway to the next lower score."""
    from sklearn.metrics import roc_curve

    fpr, tpr, scores = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, scores = fpr[1:], tpr[1:], scores[1:]  # drop the +inf "nothing positive" point
    return fpr, tpr, np.append((scores[:-1] + scores[1:]) / 2, scores[-1])


def youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    fpr, tpr, thresholds = _roc(p, y)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def sensitivity_threshold(p: np.ndarray, y: np.ndarray, target: float) -> float:
    """Among thresholds with the highest specificity whose sensitivity reaches `target`, the middle
    one in logit space: a margin on both sides, for scores that move with the scanner (docs/model.md)."""
    fpr, tpr, thresholds = _roc(p, y)
    reaching = np.flatnonzero(tpr >= target)
    tied = reaching[fpr[reaching] == fpr[reaching].min()]
    middle = logits(thresholds[[tied[0], tied[-1]]]).mean()
    return float(1.0 / (1.0 + np.exp(-middle)))


def choose_operating_points(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, target_sensitivity: float
) -> dict[str, OperatingPoint]:
    """Every named point, chosen on validation predictions; the rates are those on the same data."""
    p = np.asarray(p_pneumonia, dtype=np.float64).ravel()
    y = np.asarray(is_pneumonia, dtype=bool).ravel()
    if y.all() or not y.any():
        raise DataError("choosing operating points needs both classes in the validation split")
    screening = choose_threshold(p, y, target_sensitivity, z=SENSITIVITY_CONFIDENCE_Z)
    return {
        HIGH_SENSITIVITY: point_at(p, y, screening.threshold, screening.rule),
        SENSITIVITY_95: point_at(
            p, y, sensitivity_threshold(p, y, 0.95), "max-specificity-at-sensitivity>=0.95, mid-logit of ties"
        ),
        BALANCED: point_at(p, y, youden_threshold(p, y), "youden-j (max sensitivity + specificity)"),
        PROBABILITY_HALF: point_at(p, y, 0.5, "fixed P(pneumonia) >= 0.5"),
    }


def logits(p_pneumonia: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p_pneumonia, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p) - np.log1p(-p)


def _nll(logit: np.ndarray, y: np.ndarray, temperature: float) -> float:
    signed = np.where(y, 1.0, -1.0) * logit / temperature
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_temperature(p_pneumonia: np.ndarray, is_pneumonia: np.ndarray) -> dict[str, Any]:
    """Temperature T minimising validation log-loss of sigmoid(logit / T).

    T rescales the logit, so it changes neither the ranking (AUC) nor which side of 0.5 an image is:
    it only makes P(pneumonia) honest (label smoothing leaves the softmax under-confident, T < 1).
    """
    from scipy.optimize import minimize_scalar

    logit, y = logits(p_pneumonia), np.asarray(is_pneumonia, dtype=bool)
    fitted = minimize_scalar(lambda t: _nll(logit, y, t), bounds=(0.05, 20.0), method="bounded")
    temperature = float(fitted.x)
    return {
        "method": "temperature",
        "temperature": round(temperature, 6),
        "valid_nll": round(_nll(logit, y, 1.0), 6),
        "valid_nll_calibrated": round(_nll(logit, y, temperature), 6),
    }


def calibrated(p_pneumonia: np.ndarray, temperature: float) -> np.ndarray:
    """P(pneumonia) after temperature scaling."""
    return 1.0 / (1.0 + np.exp(-logits(p_pneumonia) / temperature))


def metadata_entries(points: dict[str, OperatingPoint], calibration: dict[str, Any]) -> dict[str, Any]:
    """What a model's `model.json` stores about its operating points (see the module docstring)."""
    default = points[DEFAULT_OPERATING_POINT]
    return {
        "threshold": default.threshold,  # the default point's, for readers of the single threshold
        "threshold_rule": default.rule,
        "operating_points": {name: point.model_dump() for name, point in points.items()},
        "default_operating_point": DEFAULT_OPERATING_POINT,
        "calibration": calibration,
    }


def select(metadata: dict[str, Any], name: str | None = None) -> tuple[str, float]:
    """(name, threshold) of operating point `name` of a model (None: its default).

    A model saved before named points has one point, `default`, at its stored threshold.
    """
    points, default = operating_points(metadata)
    chosen = default if name is None else name
    if chosen not in points:
        raise ModelError(f"unknown operating point {chosen!r}; this model has: {', '.join(points)}")
    return chosen, float(points[chosen]["threshold"])


def threshold_in_force(metadata: dict[str, Any]) -> float:
    """The threshold a model answers with when no operating point is asked for: its default point's.

    The one reading of "the model's threshold" (scoring, the gate, evaluation, the pyfunc): the single
    `threshold` key is kept equal to it for older readers, never read instead of it.
    """
    return select(metadata)[1]


def mlflow_tags(points: dict[str, dict[str, Any]], default: str) -> dict[str, str]:
    """MLflow run and model-version tags: the default point's name, and each point's threshold and rates."""
    tags = {"default_operating_point": default}
    for name, point in points.items():
        for key in ("threshold", "sensitivity", "specificity"):
            if key in point:  # a model saved with one threshold has no rates for it
                tags[f"operating_point.{name}.{key}"] = f"{float(point[key]):.6f}"
    return tags


def operating_points(metadata: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """({name: {"threshold": t, ...}}, default name) from a model's metadata.

    Reads `operating_points` and `default_operating_point` when the model names several; a model with
    one `threshold` has one point, `default`.
    """
    points = metadata.get("operating_points")
    if points:
        default = metadata.get("default_operating_point") or next(iter(points))
    else:
        points = {SINGLE_POINT: {"threshold": float(metadata["threshold"])}}
        if metadata.get("threshold_rule"):
            points[SINGLE_POINT]["rule"] = metadata["threshold_rule"]
        default = SINGLE_POINT
    if default not in points:
        raise ValueError(f"default operating point {default!r} is not one of {sorted(points)}")
    return points, default
