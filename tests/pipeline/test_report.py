"""The per-run summary published by the `report` task."""

from __future__ import annotations

from tasks.report import summary_markdown

SUMMARY = {
    "architecture": "default",
    "model_uri": "models:/cxr-pneumonia/3",
    "champion": False,
    "decision": {"reason": "auc 0.951 < champion 0.962 + margin 0"},
    "metrics": {"accuracy": 0.91, "sensitivity": 0.95, "specificity": 0.8, "auc": None},
    "threshold": 0.31234,
    "operating_point": "sensitivity-0.95",
    "model_version": 3,
    "data_digest": "ab" * 32,
    "images": {"accepted": 120, "quarantined": 3},
    "cached_tasks": ["ingest", "split"],
}


def test_summary_names_the_outcome_metrics_and_reuse():
    text = summary_markdown(SUMMARY)
    assert "`models:/cxr-pneumonia/3`" in text
    assert "champion: **no** (auc 0.951 < champion 0.962 + margin 0)" in text
    assert "specificity 0.800 (operating point `sensitivity-0.95`, threshold 0.3123)" in text
    assert "accuracy 0.910 · sensitivity 0.950 · specificity 0.800" in text
    assert "auc" not in text.split("test split:")[1].split("\n")[0]  # undefined metrics are left out
    assert "quarantined 3" in text and "reused cached stages: ingest, split" in text


def test_summary_of_a_fresh_run_says_nothing_was_reused():
    assert "reused cached stages: none" in summary_markdown({**SUMMARY, "cached_tasks": [], "champion": True})
