"""Coverage, answered rates and the risk–coverage curve; the gate's comparison of coverage at target."""

from __future__ import annotations

import numpy as np
import pytest

from bench.referral import METHODS, Scored, patient_halves, split_half_transfer
from cxr.config.params import GateParams, ReferralTargets
from cxr.evaluation.risk_coverage import (
    CURVE_COVERAGES,
    answered_line,
    answered_metrics,
    coverage_at_target,
    referral_markdown,
    referral_summary,
    risk_coverage_curve,
)
from cxr.model.referral import ReferralBand
from cxr.registry.gate import decide_coverage_outside, decide_with_outside

P = np.array([0.05, 0.1, 0.3, 0.45, 0.55, 0.7, 0.9, 0.95])
Y = np.array([False, False, True, False, True, False, True, True])


def test_answered_metrics_leave_out_the_band_and_the_out_of_domain_images():
    band = ReferralBand(low=0.4, high=0.6)
    inside = np.array([True] * 7 + [False])
    answered = answered_metrics(P, Y, 0.5, band, in_domain=inside)
    # Answered: 0.05 0.1 0.3 (normal) and 0.7 0.9 (pneumonia); 0.45, 0.55 referred; 0.95 out of domain.
    assert answered["answered_n"] == 5 and answered["coverage"]["value"] == 5 / 8
    assert answered["referred"] == 2 / 8 and answered["out_of_domain"] == 1 / 8
    assert answered["sensitivity"]["value"] == 1 / 2  # 0.3 missed, 0.9 found
    assert answered["specificity"]["value"] == pytest.approx(2 / 3, abs=1e-6)  # 0.7 a false alarm
    assert answered["accuracy"]["value"] == 3 / 5
    assert answered_line(answered) == (
        "answered alone 62.5% (referred 25.0%, out of domain 12.5%): sensitivity 0.500, specificity 0.667, "
        "accuracy 0.600"
    )
    low, high = answered["accuracy"]["ci"]
    assert low < 3 / 5 < high
    unbanded = answered_metrics(P, Y, 0.5, None)
    assert unbanded["coverage"]["value"] == 1.0 and unbanded["out_of_domain"] is None


def test_the_curve_gives_each_coverage_the_band_nearest_the_targets():
    p, y = np.concatenate([P, P]), np.concatenate([Y, Y])
    curve = risk_coverage_curve(p, y, 0.5, ReferralTargets())
    assert [row["coverage"] >= level for row, level in zip(curve, CURVE_COVERAGES, strict=True)] == [
        True
    ] * 11
    assert curve[0] == {**curve[0], "coverage": 1.0, "accuracy": 12 / 16, "low": 0.5, "high": 0.5}
    # Half the images can be answered without an error: 0.05, 0.1 (normal) and 0.9, 0.95 (pneumonia).
    last = curve[-1]
    assert (last["coverage"], last["sensitivity"], last["specificity"], last["accuracy"]) == (
        0.5,
        1.0,
        1.0,
        1.0,
    )
    assert 0.1 < last["low"] < 0.3 and 0.7 < last["high"] < 0.9


def test_coverage_at_target_is_the_largest_answered_share_reaching_the_targets():
    targets = ReferralTargets(sensitivity=1.0, specificity=1.0)
    # Answering only 0.05, 0.1 (normal) and 0.9, 0.95 (pneumonia) is the widest all-correct band.
    assert coverage_at_target(P, Y, 0.5, targets) == 4 / 8
    assert coverage_at_target(P, ~Y & False, 0.5, targets) is None
    summary = referral_summary(Y, P, 0.5, ReferralBand(low=0.4, high=0.6), targets)
    assert summary["metrics"]["coverage"] == 6 / 8 and summary["metrics"]["coverage_at_target"] == 4 / 8
    assert set(summary["ci"]) == {
        "coverage",
        "answered_sensitivity",
        "answered_specificity",
        "answered_accuracy",
    }
    text = referral_markdown(summary["answered"], summary["curve"])
    assert "band P(pneumonia) in [0.4000, 0.6000); referred 25.00%. Rates" in text
    assert "| coverage | 0.7500 [" in text and "| 0.500 | 1.000 | 1.000 | 1.000 |" in text


def test_the_gate_refuses_a_challenger_that_answers_less_outside():
    champion = {"site": {"auc": 0.9, "coverage_at_target": 0.9}}
    worse = {"site": {"auc": 0.9, "coverage_at_target": 0.8}}
    close = {"site": {"auc": 0.9, "coverage_at_target": 0.87}}
    refused, reason = decide_coverage_outside(worse, champion, 0.05)
    assert not refused and "coverage at target 0.8000 < champion 0.9000" in reason
    assert decide_coverage_outside(close, champion, 0.05)[0]
    assert decide_coverage_outside({"site": {"auc": 0.9}}, champion, 0.05) == (True, "")
    internal = {"auc": 0.95, "sensitivity": 0.97}
    promoted, reason = decide_with_outside(internal, {"auc": 0.94}, GateParams(), (worse, champion))
    assert not promoted and "answers less outside on external set site" in reason
    promoted, reason = decide_with_outside(internal, {"auc": 0.94}, GateParams(), (close, champion))
    assert promoted and "coverage at target (margin 0.05): site" in reason


def test_split_half_transfer_checks_each_method_on_the_other_patients():
    rng = np.random.default_rng(0)
    y = np.repeat(rng.random(60) < 0.6, 2)  # 60 patients, two images each
    logit = np.where(y, rng.normal(2.5, 1.2, y.size), rng.normal(-2.5, 1.2, y.size))
    scored = Scored(
        1 / (1 + np.exp(-logit)), y, np.ones(y.size, bool), np.repeat(np.arange(60).astype(str), 2)
    )
    half = patient_halves(scored, np.random.default_rng(1))
    assert 0.4 < half.mean() < 0.6 and not set(scored.patients[half]) & set(scored.patients[~half])
    methods = {name: METHODS[name] for name in ("observed", "bootstrap-0.8")}
    results = split_half_transfer(scored, methods=methods, repeats=3)
    assert set(results) == set(methods)
    for summary in results.values():
        assert 0 <= summary["not_answered"] <= 1 and 0 <= summary["targets_met"] <= 1
        assert 0.5 < summary["accuracy"] <= 1
    assert results["bootstrap-0.8"]["not_answered"] >= results["observed"]["not_answered"]


def test_an_evaluation_counts_out_of_domain_images_as_not_answered_as_their_decisions_do(tmp_path):
    import pandas as pd

    from cxr.evaluation.evaluate import evaluate_predictions
    from cxr.model.referral import SCORED, decide

    band = ReferralBand(low=0.4, high=0.6)
    inside = np.array([True] * 6 + [False, True])
    decisions = [decide(SCORED, float(p), 0.5, bool(ok), band) for p, ok in zip(P, inside, strict=True)]
    predictions = pd.DataFrame({"decision": decisions, "in_domain": inside})

    def evaluated(table: pd.DataFrame):  # noqa: ANN202 - an EvaluationResult
        return evaluate_predictions(
            Y,
            P,
            threshold=0.5,
            split="test",
            model_sha256="0" * 64,
            out_dir=tmp_path,
            predictions=table,
            band=band,
        )

    result = evaluated(predictions)
    answered = sum(decision in ("pneumonia", "normal") for decision in decisions)
    assert result.metrics["coverage"] == answered / len(P) == 5 / 8
    assert result.referral["answered"]["out_of_domain"] == 1 / 8
    # Without domain verdicts (a model saved without a domain score) only the band is left out.
    unguarded = predictions.assign(in_domain=None)
    result = evaluated(unguarded)
    assert result.metrics["coverage"] == 6 / 8 and result.referral["answered"]["out_of_domain"] is None
