"""Fit the referral band (`cxr.model.referral.ReferralBand`): the least referral around the threshold in force
whose answered images reach the target sensitivity and specificity, on other patients too.

A band [low, high) with low <= threshold <= high answers `normal` below `low` and `pneumonia` from `high` on;
the images in between are referred. On the calibration images, the band that just reaches the targets misses
them on new patients about half the time, so the band must reach them in at least `holds` of bootstrap
resamples of the calibration set (how often the chosen band held is stored as `holds_share`). `method="wilson"`
(the 95 % one-sided Wilson lower bounds of the answered rates reach the targets) and `method="observed"` (the
rates on the fitted images alone) are kept for comparison (`python -m bench.referral`) and for
`coverage_at_target`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from cxr.config.params import ReferralTargets
from cxr.core.errors import DataError
from cxr.model.referral import ReferralBand
from cxr.model.thresholds import SENSITIVITY_CONFIDENCE_Z, wilson_lower_bound

Method = Literal["bootstrap", "wilson", "observed"]
# Defaults (the run's are in `cxr.config.params.TrainParams`).
DEFAULT_RESAMPLES = 400
DEFAULT_HOLDS = 0.8
# Candidate edges per side of the threshold: quantiles of the scores there, so the search stays small.
MAX_EDGES = 160


def _edges(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(candidate lows, descending from the threshold; candidate highs, ascending from it): the threshold and
    the midpoints between neighbouring scores on each side, thinned to at most MAX_EDGES quantiles."""

    def midpoints(scores: np.ndarray) -> np.ndarray:
        scores = np.unique(scores)
        middle = (scores[:-1] + scores[1:]) / 2 if scores.size > 1 else scores[:0]
        if middle.size > MAX_EDGES:
            middle = middle[np.unique(np.linspace(0, middle.size - 1, MAX_EDGES).round().astype(int))]
        return middle

    below, above = p[p < threshold], p[p >= threshold]
    lows = np.concatenate([[threshold], midpoints(below)[::-1], [below.min()] if below.size else []])
    highs = np.concatenate(
        [[threshold], midpoints(above), [np.nextafter(above.max(), 2.0)] if above.size else []]
    )
    return lows, highs


def _counts(p: np.ndarray, y: np.ndarray, weights: np.ndarray, lows: np.ndarray, highs: np.ndarray):
    """Per row of `weights` (B, N): weighted positives/negatives below each low (B, L) and from each high on
    (B, H)."""
    below = p[None, :] < lows[:, None]  # (L, N)
    above = p[None, :] >= highs[:, None]  # (H, N)
    positive, negative = weights * y, weights * ~y
    return positive @ below.T, negative @ below.T, positive @ above.T, negative @ above.T


def _rates(pos_below, neg_below, pos_above, neg_above):  # noqa: ANN001, ANN202 - (B, L) and (B, H) arrays
    """(answered sensitivity, answered specificity, answered count) per (B, L, H); NaN rates count as 0."""
    tp, fn = pos_above[:, None, :], pos_below[:, :, None]
    tn, fp = neg_below[:, :, None], neg_above[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.nan_to_num(tp / (tp + fn))
        specificity = np.nan_to_num(tn / (tn + fp))
    return sensitivity, specificity, tp + fn + tn + fp


def _bootstrap_holds(p, y, lows, highs, targets, resamples: int, seed: int) -> np.ndarray:  # noqa: ANN001
    """(L, H) share of bootstrap resamples in which each band's answered images reach both targets."""
    rng = np.random.default_rng(seed)
    held = np.zeros((lows.size, highs.size))
    block = 50
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        draws = rng.integers(0, p.size, size=(count, p.size)) + np.arange(count)[:, None] * p.size
        weights = np.bincount(draws.ravel(), minlength=count * p.size).reshape(count, p.size).astype(float)
        sensitivity, specificity, _ = _rates(*_counts(p, y, weights, lows, highs))
        held += ((sensitivity >= targets[0]) & (specificity >= targets[1])).sum(axis=0)
    return held / max(resamples, 1)


def fit_referral_band(
    p_pneumonia: np.ndarray,
    is_pneumonia: np.ndarray,
    threshold: float,
    *,
    target_sensitivity: float,
    target_specificity: float,
    max_referral: float,
    method: Method = "bootstrap",
    holds: float = DEFAULT_HOLDS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> ReferralBand:
    """The least-referral band around `threshold` that reaches both targets by `method` (module docstring),
    referring at most `max_referral` of the images; when none does, the band within the cap that held most
    often, with `reached` False and a `note` that says so (`describe` shows it)."""
    p = np.asarray(p_pneumonia, dtype=np.float64).ravel()
    y = np.asarray(is_pneumonia, dtype=bool).ravel()
    if p.size != y.size or y.all() or not y.any():
        raise DataError("fitting a referral band needs probabilities and labels of both classes")
    lows, highs = _edges(p, threshold)
    targets = (target_sensitivity, target_specificity)
    pos_below, neg_below, pos_above, neg_above = _counts(p, y, np.ones((1, p.size)), lows, highs)
    sensitivity, specificity, answered = (
        rate[0] for rate in _rates(pos_below, neg_below, pos_above, neg_above)
    )
    referred = 1.0 - answered / p.size
    held = _bootstrap_holds(p, y, lows, highs, targets, resamples, seed)
    if method == "bootstrap":
        reaching = held >= holds
    else:
        z = SENSITIVITY_CONFIDENCE_Z if method == "wilson" else 0.0
        tp, tn = (pos_above[0][None, :], neg_below[0][:, None])
        positives, negatives = tp + pos_below[0][:, None], tn + neg_above[0][None, :]
        reaching = _bound(tp, positives, z) >= targets[0]
        reaching &= _bound(tn, negatives, z) >= targets[1]
    allowed = referred <= max_referral + 1e-12
    candidates = reaching & allowed
    reached = bool(candidates.any())
    if reached:  # least referral, then the band that held most often
        order = np.lexsort((-held[candidates], referred[candidates]))
        i, j = (axis[order[0]] for axis in np.nonzero(candidates))
    else:  # within the cap: the band that held most often, then the nearest to the targets, then the least referral
        shortfall = np.minimum(sensitivity - targets[0], specificity - targets[1])
        order = np.lexsort((referred[allowed], -shortfall[allowed], -held[allowed]))
        i, j = (axis[order[0]] for axis in np.nonzero(allowed))
    fitted: dict[str, Any] = {
        "method": method,
        "target_sensitivity": target_sensitivity,
        "target_specificity": target_specificity,
        "max_referral": max_referral,
        "holds_share": round(float(held[i, j]), 4),
        "resamples": resamples,
        "referred_share": round(float(referred[i, j]), 4),
        "answered_sensitivity": round(float(sensitivity[i, j]), 4),
        "answered_specificity": round(float(specificity[i, j]), 4),
        "n": int(p.size),
        "threshold": float(threshold),
        "reached": reached,
    }
    if method == "bootstrap":
        fitted["holds"] = holds
    if not reached:
        fitted["note"] = (
            f"no band referring at most {max_referral:.0%} of the calibration images reaches sensitivity "
            f">= {target_sensitivity:g} and specificity >= {target_specificity:g} ({method}); stored the band "
            f"that held most often ({held[i, j]:.0%} of resamples)"
        )
    return ReferralBand(low=float(lows[i]), high=float(highs[j]), **fitted)


def _bound(successes: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Wilson lower bound where n > 0 (the observed rate at z = 0); 0 where nothing is answered."""
    n_safe = np.maximum(n, 1)
    if z == 0:
        return np.where(n > 0, successes / n_safe, 0.0)
    return np.where(n > 0, wilson_lower_bound(successes, n_safe, z), 0.0)


def band_for(
    p_pneumonia: np.ndarray,
    is_pneumonia: np.ndarray,
    threshold: float,
    targets: ReferralTargets,
    *,
    fitted_on: str,
) -> ReferralBand:
    """The run's band (bootstrap method, `targets` from the config) at the threshold in force, recording the
    images it was fitted on."""
    band = fit_referral_band(
        p_pneumonia,
        is_pneumonia,
        threshold,
        target_sensitivity=targets.sensitivity,
        target_specificity=targets.specificity,
        max_referral=targets.max_share,
        holds=targets.holds,
    )
    return band.model_copy(update={"fitted_on": fitted_on})


def targets_of(band_or_metadata: dict[str, Any] | None) -> ReferralTargets:
    """The targets a stored band was fitted to (a model.json `referral` entry), else the defaults."""
    stored = band_or_metadata or {}
    defaults = ReferralTargets()
    return ReferralTargets(
        sensitivity=stored.get("target_sensitivity", defaults.sensitivity),
        specificity=stored.get("target_specificity", defaults.specificity),
        max_share=stored.get("max_referral", defaults.max_share),
        holds=stored.get("holds", defaults.holds),
    )


def describe(band: ReferralBand) -> str:
    """One line about a fitted band, for logs: where it lies, what it refers, how often it held."""
    fitted = band.model_extra or {}
    text = (
        f"refer P(pneumonia) in [{band.low:.4f}, {band.high:.4f}): {fitted.get('referred_share', 0):.1%} of "
        f"{fitted.get('n', '?')} images of the {fitted.get('fitted_on', 'calibration images')}, answered "
        f"sensitivity {fitted.get('answered_sensitivity', float('nan')):.3f}, specificity "
        f"{fitted.get('answered_specificity', float('nan')):.3f}; held in {fitted.get('holds_share', 0):.0%} of "
        "bootstrap resamples"
    )
    return text if fitted.get("reached", True) else f"{text}. {fitted['note']}"


def best_bands_by_coverage(
    p_pneumonia: np.ndarray,
    is_pneumonia: np.ndarray,
    threshold: float,
    targets: tuple[float, float],
    coverages: tuple[float, ...],
) -> list[dict[str, float]]:
    """For each coverage c (falling), the band around `threshold` answering at least c of the images, and less
    than the previous coverage where such a band exists, whose worse rate is nearest its target
    (min(sensitivity - target, specificity - target), the fit's own trade-off): rows {coverage,
    sensitivity, specificity, accuracy, low, high} on these images."""
    p = np.asarray(p_pneumonia, dtype=np.float64).ravel()
    y = np.asarray(is_pneumonia, dtype=bool).ravel()
    lows, highs = _edges(p, threshold)
    pos_below, neg_below, pos_above, neg_above = (
        count[0] for count in _counts(p, y, np.ones((1, p.size)), lows, highs)
    )
    sensitivity, specificity, answered = (
        rate[0] for rate in _rates(*(c[None] for c in (pos_below, neg_below, pos_above, neg_above)))
    )
    correct = neg_below[:, None] + pos_above[None, :]
    shortfall = np.minimum(sensitivity - targets[0], specificity - targets[1])
    rows, above = [], np.inf
    for coverage in coverages:  # from the largest: each takes the bands between it and the previous one
        allowed = answered >= coverage * p.size - 1e-9
        if (allowed & (answered < above)).any():
            allowed &= answered < above
        above = coverage * p.size - 1e-9
        i, j = np.unravel_index(int(np.argmax(np.where(allowed, shortfall, -np.inf))), shortfall.shape)
        rows.append(
            {
                "coverage": round(float(answered[i, j] / p.size), 6),
                "sensitivity": round(float(sensitivity[i, j]), 6),
                "specificity": round(float(specificity[i, j]), 6),
                "accuracy": round(float(correct[i, j] / max(answered[i, j], 1)), 6),
                "low": float(lows[i]),
                "high": float(highs[j]),
            }
        )
    return rows
