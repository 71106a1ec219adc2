"""Domain measure: what the domain score (`cxr.evaluation.domain`) costs `cxr predict` and the retrain flow."""

from __future__ import annotations

from typing import Any

from bench.data import image_files
from bench.orchestration import CHAMPION
from bench.suite import Context

# The tasks of the `domain` stage, as the Prefect API names their runs (`<task>-<suffix>`).
DOMAIN_TASKS = ("domain", "domain-drift", "domain-drift-report")


def measure_domain(context: Context) -> dict[str, Any]:
    """`score_files` (what `cxr predict` runs) with the champion's domain score vs the same model without it,
    best of `repeats` alternating runs after a warm-up; and the `domain` stage's share of the first
    orchestration run (the tasks' own time over the rest of the flow's)."""
    from bench.timing import best_of_interleaved
    from cxr.evaluation.domain import METADATA_KEY
    from cxr.evaluation.predicting import score_files
    from cxr.model.loading import load_model_with_metadata

    folder = context.data.train_dir
    model, guarded = load_model_with_metadata(CHAMPION)
    if METADATA_KEY not in guarded:
        raise RuntimeError(f"{CHAMPION} has no domain score: the retrain flow did not fit one")
    plain = {key: value for key, value in guarded.items() if key != METADATA_KEY}
    for metadata in (guarded, plain):  # tracing and first imports, untimed
        score_files(model, metadata, image_files(folder)[:8])
    best, results = best_of_interleaved(
        {
            "guarded": lambda: score_files(model, guarded, [folder]),
            "plain": lambda: score_files(model, plain, [folder]),
        },
        repeats=context.sizes.repeats,
    )
    guarded_s, plain_s, frame = best["guarded"], best["plain"], results["guarded"]
    flow = context.results["flow_runs"]["first"]
    domain_s = sum(
        run["s"] for name, run in flow["task_runs"].items() if name.rsplit("-", 1)[0] in DOMAIN_TASKS
    )
    return {
        "domain_predict_overhead": round(guarded_s / plain_s - 1, 4),
        "domain_predict_img_s": round(len(frame) / guarded_s, 1),
        "domain_plain_predict_img_s": round(len(frame) / plain_s, 1),
        "domain_predict_files": len(frame),
        "domain_flow_overhead": round(domain_s / (flow["flow_s"] - domain_s), 4),
        "domain_stage_s": round(domain_s, 3),
        "domain_out_of_domain_files": int((frame["in_domain"] == False).sum()),  # noqa: E712 - a column of bools
    }
