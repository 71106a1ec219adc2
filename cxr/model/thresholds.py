"""The decision threshold on P(pneumonia): chosen on the validation split for a target sensitivity."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from cxr.core.errors import DataError

DECISION_RULE = "pneumonia when P(pneumonia) >= threshold"


class ThresholdChoice(BaseModel):
    """A decision threshold on P(pneumonia) and how it was chosen; the rates are on the data it was chosen on."""

    threshold: float
    rule: str
    sensitivity: float
    specificity: float


# One-sided 95 % bound: the validation split is a sample, and a threshold that just reaches the
# target there misses it on new data about half the time (measured: 0.95 on valid, 0.93 on test).
SENSITIVITY_CONFIDENCE_Z = 1.645


def wilson_lower_bound(successes: np.ndarray, n: int, z: float) -> np.ndarray:
    """Lower Wilson score bound of a binomial proportion (vectorised over `successes`)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def choose_threshold(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, target_sensitivity: float, *, z: float = 0.0
) -> ThresholdChoice:
    """The threshold with the highest specificity whose sensitivity reaches the target.

    With `z > 0` the sensitivity that must reach the target is its lower Wilson bound at that z,
    not the observed value; when no threshold's bound reaches it (a small validation split), the
    observed value is used. The lowest observed score always reaches any target, by calling
    everything pneumonia; when only such useless thresholds (specificity 0) reach it, the model is
    too weak for the target and the threshold maximising Youden's J = sensitivity + specificity - 1
    is used instead. The decision is `P(pneumonia) >= threshold`; the threshold lies halfway between
    the chosen score and the next lower one.
    """
    from sklearn.metrics import roc_curve  # here, so a fully cached run never loads sklearn

    is_pneumonia = np.asarray(is_pneumonia, dtype=bool)
    if is_pneumonia.all() or not is_pneumonia.any():
        raise DataError("choosing a threshold needs both classes in the validation split")
    fpr, tpr, thresholds = roc_curve(
        is_pneumonia, np.asarray(p_pneumonia, dtype=np.float64), drop_intermediate=False
    )
    # The first point is roc_curve's "nothing is positive" threshold (+inf), not a usable decision.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    # Halfway down to the next lower score: the same decisions on this data, with the most margin.
    midpoints = np.append((thresholds[:-1] + thresholds[1:]) / 2, thresholds[-1])
    positives = int(is_pneumonia.sum())
    bounded = wilson_lower_bound(tpr * positives, positives, z) if z > 0 else tpr
    # roc_curve orders thresholds from high to low, so specificity falls along the array:
    # the first index reaching the target has the highest specificity (and threshold).
    candidates = [
        (bounded, f"max-specificity-at-sensitivity>={target_sensitivity:g}-lower-bound-z{z:g}"),
        (tpr, f"max-specificity-at-sensitivity>={target_sensitivity:g}"),
    ]
    best, rule = int(np.argmax(tpr - fpr)), "youden-j"
    for sensitivity, candidate_rule in reversed(candidates[0 if z > 0 else 1 :]):
        reaching = np.flatnonzero((sensitivity >= target_sensitivity) & (fpr < 1))
        if reaching.size:  # later (stricter) candidates override earlier ones
            best, rule = int(reaching[0]), candidate_rule
    return ThresholdChoice(
        threshold=float(midpoints[best]),
        rule=rule,
        sensitivity=float(tpr[best]),
        specificity=float(1 - fpr[best]),
    )


def binary_metrics(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, choice: ThresholdChoice
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    predicted = p_pneumonia >= choice.threshold
    return {
        "auc": float(roc_auc_score(is_pneumonia, p_pneumonia)),
        "accuracy": float(np.mean(predicted == is_pneumonia)),
        "sensitivity": choice.sensitivity,
        "specificity": choice.specificity,
        "threshold": choice.threshold,
        "n": float(len(is_pneumonia)),
    }
