"""The gate looks outside: registration with external-set scores (`cxr.registry.registration` + `cxr.registry.gate`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cxr.core import mlflow_store
from cxr.evaluation.external_sets import ExternalResult
from tests.helpers.registering import register


def outside(tmp_path: Path, challenger_auc: float, champion_auc: float) -> dict[str, ExternalResult]:
    """Scores of set `site_b` as the external stage returns them, the champion's being v1's."""
    report, plot = tmp_path / "external-report.md", tmp_path / "external-roc.png"
    report.write_text("# report\n")
    Image.new("L", (4, 4)).save(plot)

    def score(auc: float) -> dict:
        rates = {"threshold": 0.5, "accuracy": 0.9, "sensitivity": 0.92, "specificity": 0.88}
        return {
            "operating_point": "fixed",
            "operating_points": {"fixed": rates},
            "metrics": {"auc": auc, "pr_auc": auc, **rates},
            "ci": {"auc": [auc - 0.03, min(auc + 0.02, 1.0)]},
            "n": 40,
            "report": str(report),
            "plots": {"roc-curve": str(plot), "pr-curve": str(plot)},
        }

    result = ExternalResult(
        name="site_b",
        data_dir="/data/site_b",
        data_digest="e" * 64,
        n=40,
        quarantined=0,
        challenger=score(challenger_auc),
        champion=score(champion_auc),
        champion_version=1,
    )
    return {"site_b": result}


def test_a_challenger_worse_outside_is_refused_and_one_within_the_margin_promoted(
    tmp_path,
    tracking_uri,  # noqa: F811 - the fixture imported above
    test_split,  # noqa: F811
):
    assert register(tmp_path, tracking_uri, test_split, gain=0.5).champion  # weak but the first

    worse_outside = outside(tmp_path, challenger_auc=0.85, champion_auc=0.95)
    refused = register(tmp_path, tracking_uri, test_split, gain=30.0, external=worse_outside)

    assert not refused.champion and refused.champion_version == 1
    reason = refused.decision["reason"]
    assert (
        reason
        == "worse outside on external set site_b: challenger auc 0.8500 < champion 0.9500 - margin 0.01"
    )
    assert refused.decision["external"]["site_b"]["champion"]["auc"] == 0.95
    client = mlflow_store.client(tracking_uri)
    metrics = client.get_run(refused.run_id).data.metrics
    assert (metrics["external.site_b.auc"], metrics["external.site_b.champion.auc"]) == (0.85, 0.95)
    assert metrics["external.site_b.point.fixed.sensitivity"] == 0.92
    artifacts = {a.path for a in client.list_artifacts(refused.run_id, "external/site_b/champion")}
    assert "external/site_b/champion/external-roc.png" in artifacts
    card = next(a.markdown for a in refused.artifacts if a.key == "model-card")
    assert "## External validation" in card and "| champion v1 | `fixed` | 0.950 [0.920, 0.970]" in card

    within_margin = outside(tmp_path, challenger_auc=0.945, champion_auc=0.95)
    promoted = register(tmp_path, tracking_uri, test_split, gain=30.0, tag="copy", external=within_margin)

    assert promoted.champion and promoted.champion_version == promoted.version == 3
    assert promoted.decision["reason"].endswith(
        "not worse outside (auc margin 0.01): site_b auc 0.9450 vs champion 0.9500"
    )
