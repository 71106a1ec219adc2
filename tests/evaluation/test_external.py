"""External validation sets: scored with the challenger and the champion, kept apart from training, and what
the gate makes of them (`cxr.evaluation.external_sets`, `cxr.registry.gate`); bad sets are refused before any training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from cxr.config.params import GateParams
from cxr.core.errors import DataError
from cxr.evaluation.external_sets import mlflow_metrics, validate_external
from cxr.registry.gate import decide_outside, decide_with_outside
from tests.helpers.toy_models import labelled_folder, write_blob_model

GATE = GateParams(external_auc_margin=0.01)


def test_a_challenger_worse_outside_is_refused_naming_the_set():
    challenger = {"a": {"auc": 0.95}, "b": {"auc": 0.90}}
    promoted, reason = decide_outside(challenger, {"a": {"auc": 0.95}, "b": {"auc": 0.93}}, 0.01)
    assert not promoted
    assert reason == "worse outside on external set b: challenger auc 0.9000 < champion 0.9300 - margin 0.01"
    # Within the margin is not worse; every compared set is named.
    promoted, reason = decide_outside(challenger, {"a": {"auc": 0.955}, "b": {"auc": 0.905}}, 0.01)
    assert promoted and "a auc 0.9500 vs champion 0.9550" in reason and "b auc 0.9000" in reason
    # A set the champion was not scored on does not vote.
    assert decide_outside(challenger, {"a": None, "b": None}, 0.0)[0]


def test_the_gate_looks_outside_only_after_the_internal_test_passes():
    inside_better = ({"auc": 0.99, "sensitivity": 0.9}, {"auc": 0.98})
    worse_outside = ({"site": {"auc": 0.80}}, {"site": {"auc": 0.90}})
    promoted, reason = decide_with_outside(*inside_better, GATE, worse_outside)
    assert not promoted and reason.startswith("worse outside on external set site")
    promoted, reason = decide_with_outside(
        {"auc": 0.97, "sensitivity": 0.9}, {"auc": 0.98}, GATE, worse_outside
    )
    assert not promoted and reason.startswith("challenger auc 0.9700 < champion 0.9800")
    promoted, reason = decide_with_outside(inside_better[0], None, GATE, worse_outside)
    assert promoted and reason == "first model: no champion yet"
    promoted, reason = decide_with_outside(
        *inside_better, GATE, ({"site": {"auc": 0.95}}, {"site": {"auc": 0.90}})
    )
    assert promoted and reason.endswith("site auc 0.9500 vs champion 0.9000")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    return str(write_blob_model(tmp_path_factory.mktemp("blob")) / "model.keras")


def training_split(path: Path, sha256s: list[str]) -> str:
    """A split file as the split stage writes it, as far as the leak check reads it."""
    frame = pd.DataFrame({"sha256": sha256s, "split": ["train"] * len(sha256s)})
    frame.to_parquet(path, index=False)
    return str(path)


def test_an_external_set_is_scored_with_challenger_and_champion(model_file, tmp_path):
    folder = labelled_folder(tmp_path / "site", pneumonia=5, normal=4)
    split = training_split(tmp_path / "split.parquet", ["0" * 64])

    result = validate_external("site_b", str(folder), model_file, split, (3, str(Path(model_file).parent)))

    assert (result.n, result.quarantined, result.champion_version) == (9, 0, 3)
    for score in (result.challenger, result.champion):
        assert score["metrics"]["auc"] == 1.0 and score["metrics"]["confusion"] == [[5, 0], [0, 4]]
        assert set(score["ci"]) >= {"auc", "sensitivity", "specificity"}
        assert set(score["plots"]) >= {"roc-curve", "pr-curve"} and score["operating_point"] == "default"
    assert len(result.data_digest) == 64 and result.is_intact()
    assert set(result.summary()) >= {"challenger", "champion", "champion_version", "data_digest", "n"}
    [artifact] = result.artifacts
    assert artifact.key == "external-site-b"
    assert "champion v3" in artifact.markdown and artifact.markdown.count("data:image/png") == 4
    metrics = mlflow_metrics({"site_b": result})
    assert metrics["external.site_b.auc"] == metrics["external.site_b.champion.auc"] == 1.0
    assert metrics["external.site_b.point.default.sensitivity"] == 1.0
    assert "external.site_b.sensitivity_ci_low" in metrics
    # The folder is only read: manifests and reports live in the state folder.
    assert sorted(path.name for path in folder.iterdir()) == ["NORMAL", "PNEUMONIA"]


def test_an_external_set_sharing_training_images_is_refused(model_file, tmp_path):
    folder = labelled_folder(tmp_path / "site", pneumonia=3, normal=3)
    shared = hashlib.sha256((folder / "NORMAL" / "IM-0001-0001.png").read_bytes()).hexdigest()
    split = training_split(tmp_path / "split.parquet", [shared])
    with pytest.raises(DataError, match="external set site: 1 of its images are in this run's training data"):
        validate_external("site", str(folder), model_file, split, None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nowhere", "external set site: folder not found"),
        (
            lambda root: labelled_folder(root / "one", pneumonia=3, normal=0),
            "external set site: .* has no normal",
        ),
        (lambda root: root / "data" / "inside", "overlaps the training folder"),
    ],
)
def test_a_bad_external_set_is_a_clear_error_before_training(tmp_path, capsys, make, message):
    (tmp_path / "data" / "inside").mkdir(parents=True)
    folder = make(tmp_path)
    code = main(["train", "--data", str(tmp_path / "data"), "--external", f"site={folder}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: ") and len(error.splitlines()) == 1
    assert pd.Series([error]).str.contains(message).all(), error


def test_external_set_names_and_calibrate_on_are_checked(tmp_path, capsys):
    site = labelled_folder(tmp_path / "site", pneumonia=2, normal=2)
    (tmp_path / "x").mkdir()
    assert main(["train", "--data", str(tmp_path / "x"), "--external", f"bad.name={site}"]) == 2
    assert "external set name 'bad.name'" in capsys.readouterr().err
    assert (
        main(["train", "--data", str(tmp_path / "x"), "--external", f"s={site}", "--calibrate-on", "t"]) == 2
    )
    assert "calibrate_on 't' is not an external set" in capsys.readouterr().err


def test_the_gate_rescores_a_champion_that_moved_since_the_set_was_scored(monkeypatch):
    from cxr.evaluation import external_sets as external
    from cxr.evaluation.external_sets import ExternalResult, champion_metrics_now

    scored_with = []
    monkeypatch.setattr(
        external,
        "score_on_set",
        lambda model, folder: scored_with.append((model, folder)) or {"metrics": {"auc": 0.7}},
    )
    score = {"metrics": {"auc": 0.9}}
    result = ExternalResult(
        name="s",
        data_dir="/d",
        data_digest="e",
        n=4,
        quarantined=0,
        challenger=score,
        champion=score,
        champion_version=1,
    )
    assert champion_metrics_now({"s": result}, 1, "m") == {"s": {"auc": 0.9}} and scored_with == []
    assert champion_metrics_now({"s": result}, 2, "m") == {"s": {"auc": 0.7}}
    assert scored_with == [("models:/m/2", "/d")]
    assert champion_metrics_now({"s": result}, None, "m") == {"s": None}
