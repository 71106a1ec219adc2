"""`cxr evaluate`: score a model on a whole labelled folder, outside the retraining flow.

The folder goes through the pipeline's own library steps (ingest checks, batches at the model's image
size, the evaluation's metrics) so its numbers are comparable with the test metrics of a retrain run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.core.atomic_files import sha256_file
from cxr.core.caching import sha256_text
from cxr.core.errors import DataError
from cxr.core.state_folder import state_dir
from cxr.data.batches import BatchesResult, materialise_batches
from cxr.data.ingesting import ingest_folder
from cxr.data.manifests import MANIFEST_NAME, IngestResult
from cxr.evaluation.domain_fit import domain_summary
from cxr.evaluation.evaluate import evaluate_model
from cxr.evaluation.scoring import min_image_side
from cxr.model.loading import METADATA_FILE, load_model_with_metadata, resolve_model
from cxr.model.operating_points import select

# Every accepted file of the folder is scored as this split.
SPLIT = "test"


def evaluate_folder(
    model_uri_or_path: str, data_dir: Path, operating_point: str | None = None
) -> dict[str, Any]:
    """Metrics (with 95 % CIs) of a model on every accepted image of a labelled folder (any layout), copies
    of the same image included (`duplicates` counts them).

    Uses the model's image size, its smallest accepted image side (as serving: smaller files are quarantined as
    `too_small`) and its operating point `operating_point` (None: the model's default); `decisions` counts the
    images per `decision` and `predictions` is the per-image table;
    `operating_points` gives the rates at every point the model stores. The manifest and quarantine list (one folder
    per data folder, so a re-run re-checks only changed files), plots and `report.md` stay in the
    state folder; the decoded batches are temporary.
    """
    model_path = resolve_model(model_uri_or_path)
    _, metadata = load_model_with_metadata(model_path)  # fail on a bad model before the slow ingest
    point, _ = select(metadata, operating_point)  # and on an unknown operating point
    with labelled_batches(Path(data_dir), int(metadata["image_size"]), min_image_side(metadata)) as (
        ingested,
        batches,
    ):
        # Named by what decides the numbers: the network, its model.json (a calibrated version shares the
        # network) and the operating point, so no evaluation overwrites the files another one points at.
        scored_by = sha256_text(f"{sha256_file(model_path.with_name(METADATA_FILE))}|{point}")[:8]
        report_dir = state_dir(
            "reports", f"folder-{ingested.digest[:12]}-{sha256_file(model_path)[:12]}-{scored_by}"
        )
        result = evaluate_model(
            model_path, batches, split=SPLIT, out_dir=report_dir, operating_point=operating_point
        )
        domain = domain_summary(model_path, batches, SPLIT, threshold=float(result.metrics["threshold"]))
    return {
        "model": str(model_uri_or_path),
        "data_dir": str(Path(data_dir).resolve()),
        "operating_point": result.operating_point,
        "operating_points": result.operating_points,
        "metrics": result.metrics,
        "ci": result.ci,
        "decisions": result.decisions,
        "predictions": str(result.predictions_path) if result.predictions_path else None,
        "n": result.n,
        "duplicates": ingested.duplicates,
        "quarantined": ingested.quarantined,
        "quarantined_by_reason": ingested.quarantined_by_reason,
        "quarantine": ingested.quarantine_path,
        "report": str(result.report_path),
        "plots": {name: str(path) for name, path in result.plots.items()},
        "data_digest": ingested.digest,
        "manifest": ingested.manifest_path,
        # Images the model's domain score flags (`cxr.evaluation.domain`), and the metrics on the rest.
        **domain,
    }


@contextmanager
def labelled_batches(
    data_dir: Path, image_size: int, min_side: int
) -> Iterator[tuple[IngestResult, BatchesResult]]:
    """(ingest result, batches of every accepted file as split `test`) of a labelled folder, files with a side
    below `min_side` quarantined; the batches are temporary. The manifest folder is one per data folder, so a
    re-run re-checks only changed files.

    A folder without images of both classes is a `DataError`: no metric is defined on one class.
    """
    manifest_dir = state_dir("manifests", f"evaluate-{sha256_text(str(data_dir.resolve()))[:16]}")
    previous = manifest_dir / MANIFEST_NAME
    ingested = ingest_folder(
        data_dir,
        manifest_dir,
        min_side=min_side,
        previous_manifest=previous if previous.is_file() else None,
        keep_duplicates=True,  # a labelled folder is scored whole; copies are reported, not removed
    )
    missing = [label for label, count in ingested.per_class.items() if count == 0]
    if missing:
        raise DataError(
            f"{data_dir} has no usable {' or '.join(missing)} images ({ingested.per_class}); metrics need both "
            f"classes (quarantined files: {ingested.quarantine_path})"
        )
    with tempfile.TemporaryDirectory(prefix="evaluate-", dir=state_dir("tmp")) as work:
        work_dir = Path(work)
        split_path = work_dir / "split.parquet"
        pd.read_parquet(ingested.manifest_path).assign(split=SPLIT).to_parquet(split_path, index=False)
        yield ingested, materialise_batches(split_path, work_dir / "batches", image_size=image_size)
