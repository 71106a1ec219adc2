"""Operating points chosen on validation scores, their intervals, temperature calibration, selection by
name, and `cxr evaluate` / `cxr predict --operating-point`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cli.main import build_parser, main
from cxr.core.errors import DataError, ModelError
from cxr.model.operating_points import (
    BALANCED,
    DEFAULT_OPERATING_POINT,
    HIGH_SENSITIVITY,
    PROBABILITY_HALF,
    SENSITIVITY_95,
    calibrated,
    choose_operating_points,
    fit_temperature,
    metadata_entries,
    select,
    sensitivity_threshold,
    wilson_interval,
)
from tests.helpers.toy_models import labelled_folder, write_blob_model


def _scores(n: int = 2000, separation: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_pneumonia = rng.random(n) < 0.7
    logit = rng.normal(0, 1.5, n) + separation * np.where(is_pneumonia, 1, -1)
    return 1 / (1 + np.exp(-logit)), is_pneumonia


def _rates(p: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = p >= threshold
    return predicted[y].mean(), (~predicted[~y]).mean()


def test_points_meet_their_rules_on_validation_scores():
    p, y = _scores()
    points = choose_operating_points(p, y, target_sensitivity=0.97)
    assert list(points) == [HIGH_SENSITIVITY, SENSITIVITY_95, BALANCED, PROBABILITY_HALF]
    for point in points.values():  # stored rates are the rates at the stored threshold
        assert (point.sensitivity, point.specificity) == pytest.approx(_rates(p, y, point.threshold))
        assert point.sensitivity_ci[0] <= point.sensitivity <= point.sensitivity_ci[1]
        assert point.specificity_ci[0] <= point.specificity <= point.specificity_ci[1]
    assert points[PROBABILITY_HALF].threshold == 0.5
    # the 95 % margin on 0.97 sits lowest; the 0.95 point reaches 0.95 with the best specificity
    assert points[HIGH_SENSITIVITY].threshold < points[SENSITIVITY_95].threshold
    assert points[SENSITIVITY_95].sensitivity >= 0.95
    better = [t for t in np.unique(p) if _rates(p, y, t)[0] >= 0.95]
    assert points[SENSITIVITY_95].specificity == pytest.approx(max(_rates(p, y, t)[1] for t in better))
    j = {name: pt.sensitivity + pt.specificity for name, pt in points.items()}
    assert j[BALANCED] == max(j.values())


def test_sensitivity_point_sits_mid_way_between_the_thresholds_it_ties_with():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95])
    y = np.array([False, False, False, True, True, True, True, True])
    # specificity 1 and sensitivity >= 0.5 from threshold 0.75 (halfway 0.7-0.8) down to 0.45 (0.3-0.6)
    expected = 1 / (1 + np.exp(-(np.log(0.75 / 0.25) + np.log(0.45 / 0.55)) / 2))
    assert sensitivity_threshold(p, y, 0.5) == pytest.approx(expected)
    assert sensitivity_threshold(p, y, 0.95) == pytest.approx(0.45)  # only the lowest reaches 0.95
    assert choose_operating_points(p, y, 0.97)[SENSITIVITY_95].threshold == pytest.approx(0.45)


def test_points_need_both_classes():
    with pytest.raises(DataError, match="both classes"):
        choose_operating_points(np.array([0.2, 0.9]), np.array([True, True]), 0.9)


def test_wilson_interval_matches_the_textbook_value():
    # 81 of 100: Wilson 95 % interval 0.7222 - 0.8749
    assert wilson_interval(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)


def test_temperature_undoes_a_known_overconfidence_and_keeps_the_ranking():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 1.5, 20000)  # stays inside the logit clip (1e-7), so no ties are made
    y = rng.random(20000) < 1 / (1 + np.exp(-true_logit))
    overconfident = 1 / (1 + np.exp(-3 * true_logit))
    fitted = fit_temperature(overconfident, y)
    assert fitted["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fitted["valid_nll_calibrated"] < fitted["valid_nll"]
    fixed = calibrated(overconfident, fitted["temperature"])
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, overconfident), abs=1e-9)
    assert np.array_equal(fixed >= 0.5, overconfident >= 0.5)


def test_metadata_names_the_default_and_selection_reads_it():
    p, y = _scores()
    points = choose_operating_points(p, y, 0.97)
    stored = metadata_entries(points, fit_temperature(p, y))
    assert stored["default_operating_point"] == DEFAULT_OPERATING_POINT
    assert stored["threshold"] == points[DEFAULT_OPERATING_POINT].threshold
    assert select(stored) == (DEFAULT_OPERATING_POINT, points[DEFAULT_OPERATING_POINT].threshold)
    assert select(stored, BALANCED) == (BALANCED, points[BALANCED].threshold)
    with pytest.raises(ModelError, match="unknown operating point 'nope'"):
        select(stored, "nope")


def test_a_model_saved_before_named_points_has_one_default_point():
    assert select({"threshold": 0.3}) == ("default", 0.3)
    with pytest.raises(ModelError, match="balanced"):
        select({"threshold": 0.3}, BALANCED)


@pytest.fixture(scope="module")
def two_point_model(tmp_path_factory) -> Path:
    """The blob model with two named points: `lenient` (0.5, the default) and `strict` (nothing is pneumonia)."""
    folder = write_blob_model(tmp_path_factory.mktemp("model"))
    metadata = json.loads((folder / "model.json").read_text())
    metadata["operating_points"] = {"lenient": {"threshold": 0.5}, "strict": {"threshold": 1.1}}
    metadata["default_operating_point"] = "lenient"
    (folder / "model.json").write_text(json.dumps(metadata))
    return folder


def test_cli_evaluate_uses_the_named_operating_point(two_point_model, tmp_path, capsys):
    folder = labelled_folder(tmp_path / "data", pneumonia=4, normal=3)
    model = str(two_point_model)

    assert main(["evaluate", "--model", model, "--data", str(folder), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["operating_point"] == "lenient" and default["metrics"]["operating_point"] == "lenient"
    assert (default["metrics"]["threshold"], default["metrics"]["accuracy"]) == (0.5, 1.0)
    assert default["operating_points"]["strict"]["sensitivity"] == 0.0
    assert "`lenient`" in Path(default["report"]).read_text()

    assert (
        main(["evaluate", "--model", model, "--data", str(folder), "--operating-point", "strict", "--json"])
        == 0
    )
    strict = json.loads(capsys.readouterr().out)
    assert strict["operating_point"] == "strict" and strict["metrics"]["threshold"] == 1.1
    assert (strict["metrics"]["sensitivity"], strict["metrics"]["specificity"]) == (0.0, 1.0)

    assert main(["evaluate", "--model", model, "--data", str(folder), "--operating-point", "nope"]) == 2
    assert "unknown operating point 'nope'" in capsys.readouterr().err


def test_predict_labels_at_the_named_operating_point(prefect_harness, two_point_model, tmp_path):
    from flows.predict import predict

    folder = labelled_folder(tmp_path / "data", pneumonia=3, normal=2)
    options = {"paths": [str(folder)], "model_uri": str(two_point_model), "out_csv": str(tmp_path / "p.csv")}

    summary = predict(**options)
    assert (summary["operating_point"], summary["threshold"]) == ("lenient", 0.5)
    assert summary["by_label"] == {"pneumonia": 3, "normal": 2}

    summary = predict(**options, operating_point="strict")
    assert (summary["operating_point"], summary["threshold"]) == ("strict", 1.1)
    assert summary["by_label"] == {"pneumonia": 0, "normal": 5}


def test_cli_predict_takes_an_operating_point():
    args = build_parser().parse_args(["predict", "a.png", "--operating-point", "strict"])
    assert args.operating_point == "strict"
    assert build_parser().parse_args(["predict", "a.png"]).operating_point is None
