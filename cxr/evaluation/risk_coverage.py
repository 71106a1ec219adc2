"""What referral buys: coverage (the share of images answered alone) and the metrics on the answered images.

- `answered_metrics`: coverage and sensitivity, specificity and accuracy on the images answered alone
  (outside the model's referral band, and in domain where the domain verdicts are given), each with a 95 %
  Wilson interval, beside the all-image metrics.
- `risk_coverage_curve`: the same rates as more images are referred, from every image answered down to half
  of them, each coverage with the band around the threshold that best balances the two targets.
- `coverage_at_target`: the largest coverage of a band around the threshold whose answered images reach the
  targets on these images (the observed rates, no margin): what the gate compares between two models outside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.config.params import ReferralTargets
from cxr.model.operating_points import wilson_interval
from cxr.model.referral import ReferralBand
from cxr.model.referral_fit import best_bands_by_coverage, fit_referral_band

ANSWERED_RATES = ("sensitivity", "specificity", "accuracy")
# What an evaluation adds to its metrics (`referral_summary`), and those of them with a CI.
REFERRAL_CI_METRICS = ("coverage", *(f"answered_{rate}" for rate in ANSWERED_RATES))
REFERRAL_METRICS = (*REFERRAL_CI_METRICS, "referred", "coverage_at_target")
# Coverages of the curve, from all images answered down to half.
CURVE_COVERAGES = tuple(round(1.0 - step / 20, 2) for step in range(11))


def _rates(p: np.ndarray, y: np.ndarray, threshold: float, answered: np.ndarray) -> dict[str, Any]:
    """Coverage, and the answered rates (None where undefined) with their Wilson intervals."""
    predicted = p >= threshold
    counts = {
        "sensitivity": (int((answered & y & predicted).sum()), int((answered & y).sum())),
        "specificity": (int((answered & ~y & ~predicted).sum()), int((answered & ~y).sum())),
        "accuracy": (int((answered & (predicted == y)).sum()), int(answered.sum())),
        "coverage": (int(answered.sum()), int(y.size)),
    }
    return {
        name: {
            "value": None if total == 0 else round(hits / total, 6),
            "ci": None if total == 0 else list(wilson_interval(hits, total)),
        }
        for name, (hits, total) in counts.items()
    }


def answered_metrics(
    p_pneumonia: np.ndarray,
    is_pneumonia: np.ndarray,
    threshold: float,
    band: ReferralBand | None,
    in_domain: np.ndarray | None = None,
) -> dict[str, Any]:
    """{coverage, referred, out_of_domain (shares), answered_n, sensitivity, specificity, accuracy (on the
    answered images, each {value, ci}), band} for a model's band at `threshold` (None: nothing referred)."""
    p = np.asarray(p_pneumonia, dtype=np.float64).ravel()
    y = np.asarray(is_pneumonia, dtype=bool).ravel()
    inside = np.ones(p.size, bool) if in_domain is None else np.asarray(in_domain, dtype=bool).ravel()
    referred = inside & (band.refers_all(p) if band is not None else np.zeros(p.size, bool))
    answered = inside & ~referred
    rates = _rates(p, y, threshold, answered)
    return {
        **rates,
        "referred": round(float(referred.mean()), 6) if p.size else None,
        "out_of_domain": None if in_domain is None else round(float((~inside).mean()), 6),
        "answered_n": int(answered.sum()),
        "band": None if band is None else [band.low, band.high],
    }


def risk_coverage_curve(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, threshold: float, targets: ReferralTargets
) -> list[dict[str, float]]:
    """Rows {coverage, sensitivity, specificity, accuracy, low, high} at each of CURVE_COVERAGES: the band
    around `threshold` answering at least that share whose worse rate is nearest its target (the trade-off
    the band's fit makes), with the rates on its answered images."""
    return best_bands_by_coverage(
        p_pneumonia, is_pneumonia, threshold, (targets.sensitivity, targets.specificity), CURVE_COVERAGES
    )


def coverage_at_target(
    p_pneumonia: np.ndarray, is_pneumonia: np.ndarray, threshold: float, targets: ReferralTargets
) -> float | None:
    """The largest share of these images a band around `threshold` answers with both targets reached on them
    (0.0 when no band does; None with one class only)."""
    y = np.asarray(is_pneumonia, dtype=bool)
    if y.all() or not y.any():
        return None
    band = fit_referral_band(
        p_pneumonia,
        y,
        threshold,
        target_sensitivity=targets.sensitivity,
        target_specificity=targets.specificity,
        max_referral=1.0,
        method="observed",
        resamples=0,
    )
    return round(1.0 - float(band.model_extra["referred_share"]), 6) if band.model_extra["reached"] else 0.0


def answered_line(answered: dict[str, Any]) -> str:
    """One line about the images answered alone (`answered_metrics`), for the terminal."""
    outside = "" if answered["out_of_domain"] is None else f", out of domain {answered['out_of_domain']:.1%}"
    rates = ", ".join(
        f"{rate} {'n/a' if answered[rate]['value'] is None else format(answered[rate]['value'], '.3f')}"
        for rate in ANSWERED_RATES
    )
    coverage = answered["coverage"]["value"] or 0.0
    return f"answered alone {coverage:.1%} (referred {answered['referred']:.1%}{outside}): {rates}"


def referral_markdown(answered: dict[str, Any], curve: list[dict[str, Any]]) -> str:
    """The report section: coverage and answered rates with CIs, and the risk–coverage curve."""

    def shown(entry: dict[str, Any]) -> str:
        if entry["value"] is None:
            return "n/a"
        return f"{entry['value']:.4f}" + (
            f" [{entry['ci'][0]:.4f}, {entry['ci'][1]:.4f}]" if entry["ci"] else ""
        )

    band = answered["band"]
    where = f"band P(pneumonia) in [{band[0]:.4f}, {band[1]:.4f})" if band else "no referral band"
    rows = "\n".join(f"| {name} | {shown(answered[name])} |" for name in ("coverage", *ANSWERED_RATES))
    columns = ("coverage", *ANSWERED_RATES, "low", "high")
    curve_rows = "\n".join("| " + " | ".join(f"{row[key]:.3f}" for key in columns) + " |" for row in curve)
    outside = "" if answered["out_of_domain"] is None else f", out of domain {answered['out_of_domain']:.2%}"
    return (
        f"## Referral\n\nAnswered alone: outside the {where}{' and in domain' if outside else ''}; referred "
        f"{answered['referred']:.2%}{outside}. Rates on the {answered['answered_n']} answered images, 95 % "
        "Wilson intervals in brackets.\n\n"
        f"| measure | value |\n|---|---|\n{rows}\n\n"
        "Risk–coverage on these images: at each coverage, the band [low, high) around the threshold whose "
        "worse rate is nearest its target:\n\n"
        f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n{curve_rows}\n"
    )


def referral_summary(
    is_pneumonia: np.ndarray,
    p_pneumonia: np.ndarray,
    threshold: float,
    band: ReferralBand | None,
    targets: ReferralTargets,
    in_domain: np.ndarray | None = None,
) -> dict[str, Any]:
    """What an evaluation adds: flat `metrics` (coverage, referred, answered_<rate>, coverage_at_target) and
    their `ci`, the `answered` detail and the `curve`. With `in_domain` (the domain verdicts), an image out of
    domain is not answered, as its `decision` says."""
    answered = answered_metrics(p_pneumonia, is_pneumonia, threshold, band, in_domain)
    names = dict(zip(("coverage", *ANSWERED_RATES), REFERRAL_CI_METRICS, strict=True))
    metrics = {flat: answered[name]["value"] for name, flat in names.items()}
    metrics["referred"] = answered["referred"]
    metrics["coverage_at_target"] = coverage_at_target(p_pneumonia, is_pneumonia, threshold, targets)
    return {
        "metrics": metrics,
        "ci": {flat: answered[name]["ci"] for name, flat in names.items()},
        "answered": answered,
        "curve": risk_coverage_curve(p_pneumonia, is_pneumonia, threshold, targets),
    }
