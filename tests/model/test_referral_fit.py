"""The referral band: the least referral around the threshold whose answered images reach the targets."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.config.params import ReferralTargets, TrainParams
from cxr.core.errors import DataError
from cxr.model.referral import ReferralBand
from cxr.model.referral_fit import band_for, describe, fit_referral_band, targets_of
from cxr.registry.site_calibration import with_site_points


def scores(n: int, seed: int = 0, separation: float = 3.5) -> tuple[np.ndarray, np.ndarray]:
    """Logit-normal P(pneumonia) of two overlapping classes, 70 % pneumonia."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.7
    logit = np.where(y, rng.normal(separation / 2, 1.3, n), rng.normal(-separation / 2, 1.3, n))
    return 1 / (1 + np.exp(-logit)), y


def answered_rates(p, y, band: ReferralBand) -> tuple[float, float, float]:
    answered = ~band.refers_all(p)
    predicted = p >= band.high
    sensitivity = (answered & y & predicted).sum() / (answered & y).sum()
    specificity = (answered & ~y & ~predicted).sum() / (answered & ~y).sum()
    return sensitivity, specificity, 1 - answered.mean()


def fit(p, y, threshold=0.5, **keywords) -> ReferralBand:
    defaults = {"target_sensitivity": 0.95, "target_specificity": 0.85, "max_referral": 0.5}
    return fit_referral_band(p, y, threshold, **{**defaults, **keywords})


def test_the_band_holds_the_threshold_and_its_answered_images_reach_the_targets():
    p, y = scores(600)
    band = fit(p, y, method="observed", resamples=0)
    sensitivity, specificity, referred = answered_rates(p, y, band)
    assert band.low <= 0.5 <= band.high and band.model_extra["reached"]
    assert sensitivity >= 0.95 and specificity >= 0.85
    assert band.model_extra["referred_share"] == pytest.approx(referred, abs=1e-4)
    # Least referral: narrowing either side by one image's worth breaks a target.
    inside = np.sort(p[band.refers_all(p)])
    for narrower in (
        ReferralBand(low=inside[0] + 1e-9, high=band.high),
        ReferralBand(low=band.low, high=inside[-1]),
    ):
        if narrower.low <= 0.5 <= narrower.high:
            rates = answered_rates(p, y, narrower)
            assert rates[0] < 0.95 or rates[1] < 0.85


def test_the_bootstrap_band_is_wider_and_holds_more_often_than_the_observed_one():
    p, y = scores(400, seed=1)
    observed = fit(p, y, method="observed")
    held = fit(p, y, method="bootstrap", holds=0.9, seed=3)
    assert held.model_extra["holds_share"] >= 0.9 > observed.model_extra["holds_share"]
    assert held.model_extra["referred_share"] > observed.model_extra["referred_share"]
    assert held.low <= observed.low and held.high >= observed.high
    again = fit(p, y, method="bootstrap", holds=0.9, seed=3)
    assert (again.low, again.high) == (held.low, held.high)  # seeded: the same band


def test_a_band_that_needs_no_referral_is_empty():
    p, y = scores(300, separation=9.0)
    band = fit(p, y, method="observed", resamples=0)
    assert band.low == band.high == 0.5 and band.model_extra["referred_share"] == 0.0
    assert not band.refers(0.5)


def test_out_of_reach_targets_store_the_best_band_and_say_so():
    p, y = scores(300, separation=1.0)
    band = fit(p, y, target_sensitivity=0.999, target_specificity=0.999, max_referral=0.1, resamples=50)
    assert not band.model_extra["reached"] and band.model_extra["referred_share"] <= 0.1
    assert "no band referring at most 10%" in band.model_extra["note"]
    assert band.model_extra["note"] in describe(band)


def test_one_class_is_a_clear_error():
    with pytest.raises(DataError, match="both classes"):
        fit(np.array([0.2, 0.8]), np.array([True, True]))


def test_the_run_fits_with_its_configured_targets_and_records_them():
    p, y = scores(300, seed=2)
    targets = TrainParams().referral
    assert (targets.sensitivity, targets.specificity) == (0.95, 0.85)
    band = band_for(p, y, 0.5, ReferralTargets(specificity=0.9), fitted_on="validation split")
    stored = band.model_dump()
    assert stored["fitted_on"] == "validation split" and stored["method"] == "bootstrap"
    assert stored["holds_share"] >= targets.holds
    assert targets_of(stored) == ReferralTargets(specificity=0.9)
    assert targets_of(None) == ReferralTargets()


def test_making_a_site_point_the_default_brings_the_band_fitted_around_it():
    p, y = scores(200, seed=4)
    from cxr.registry.site_calibration import site_points

    points = site_points(p, y, "a", 0.95)
    threshold = points["a:sensitivity-0.95"].threshold
    band = band_for(p, y, threshold, ReferralTargets(), fitted_on="site a").model_dump()
    model = {"threshold": 0.5, "referral": {"low": 0.4, "high": 0.6}}
    kept = with_site_points(model, "a", points, {"referral": band}, None)
    assert kept["referral"] == {"low": 0.4, "high": 0.6}  # the default threshold did not move
    moved = with_site_points(model, "a", points, {"referral": band}, "a:sensitivity-0.95")
    assert moved["referral"] == band and moved["threshold"] == threshold
    other = with_site_points(model, "a", points, {"referral": band}, "a:balanced")
    assert other["referral"] == {"low": 0.4, "high": 0.6}  # a band is only moved with its own threshold
