"""Data drift: the share of a run's new images that are out of the serving model's domain (`cxr.evaluation.domain`).

"New" are the accepted images the incremental ingest had to check: files added or changed since the
folder's previous ingest (a folder's first ingest has none: there is nothing earlier to drift from). They are judged by the model that serves
answers (the champion) when it has a domain score, else by the run's own model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.core.artifacts import Artifact, WithArtifacts
from cxr.data.imaging import BadImage, load_greyscale
from cxr.evaluation.domain import DomainGuard, DomainScorer
from cxr.model.loading import load_model_with_metadata

# Images decoded and scored at once: bounds memory for any number of new files.
CHUNK_FILES = 256
FLAGGED_ROWS_SHOWN = 50
NO_NEW_IMAGES = "no new images since the folder's previous ingest (or this is its first)"
NO_GUARD = "the model has no domain score"


class DriftResult(WithArtifacts):
    """How many of the new images the model's domain score flags, and whether that calls for an alert."""

    data_dir: str
    new_images: int
    out_of_domain: int | None  # None: nothing judged them (no model with a domain score)
    share: float | None
    alert_share: float
    model_uri: str | None
    note: str = ""

    @property
    def alert(self) -> bool:
        return self.share is not None and self.share > self.alert_share

    def event_payload(self) -> dict[str, object]:
        """What the `cxr.data.drift` event carries (and its message shows)."""
        return {
            **self.model_dump(exclude={"artifacts"}),
            "share_percent": round(100 * (self.share or 0), 1),
            "alert_percent": round(100 * self.alert_share, 1),
        }


def measure_drift(
    paths: list[str], model_path: Path, model_uri: str, *, data_dir: str, alert_share: float
) -> DriftResult:
    """Score `paths` with the domain score of the model at `model_path`; the flagged share and its artifact
    (published on every run, also when nothing could be judged)."""
    base = {
        "data_dir": data_dir,
        "new_images": len(paths),
        "alert_share": alert_share,
        "model_uri": model_uri,
    }
    if not paths:
        return with_artifact(DriftResult(**base, out_of_domain=None, share=None, note=NO_NEW_IMAGES), [])
    network, metadata = load_model_with_metadata(model_path)
    guard = DomainGuard.from_metadata(metadata)
    if guard is None:
        return with_artifact(DriftResult(**base, out_of_domain=None, share=None, note=NO_GUARD), [])
    scored = _scores(DomainScorer(network, guard), paths, int(metadata["image_size"]))
    outside = ~guard.in_domain(np.array([score for _, score in scored]))
    flagged = [row for row, out in zip(scored, outside, strict=True) if out]
    share = len(flagged) / len(scored) if scored else None
    note = f"domain score threshold {guard.threshold:.3f}"
    return with_artifact(DriftResult(**base, out_of_domain=len(flagged), share=share, note=note), flagged)


def _scores(scorer: DomainScorer, paths: list[str], size: int) -> list[tuple[str, float]]:
    """(path, domain score) of each file that still decodes, read in chunks."""
    scored: list[tuple[str, float]] = []
    for start in range(0, len(paths), CHUNK_FILES):
        images = {}
        for path in paths[start : start + CHUNK_FILES]:
            try:
                images[path] = load_greyscale(Path(path), size)
            except BadImage:  # changed on disk since the ingest checked it: not judged
                continue
        if images:
            scores = scorer.predict(np.stack(list(images.values()))[..., None])[1]
            scored += zip(images, scores.tolist(), strict=True)
    return scored


def with_artifact(result: DriftResult, flagged: list[tuple[str, float]]) -> DriftResult:
    """`result` with its `data-drift` artifact: the share, the verdict and the flagged files by score."""
    shown = sorted(flagged, key=lambda row: -row[1])[:FLAGGED_ROWS_SHOWN]
    rows = "\n".join(f"| {path} | {score:.2f} |" for path, score in shown) or "| none | |"
    verdict = "**above the alert share**" if result.alert else "not above the alert share"
    share = "n/a" if result.share is None else f"{100 * result.share:.1f} %"
    artifact = Artifact(
        key="data-drift",
        description="Share of the run's new images that are out of the model's domain",
        markdown=(
            f"# Data drift\n\n{result.out_of_domain} of {result.new_images} new images out of domain ({share}; "
            f"{verdict} of {100 * result.alert_share:.1f} %), judged by `{result.model_uri}` ({result.note}).\n\n"
            f"| flagged image (highest scores first) | domain score |\n|---|---|\n{rows}\n"
        ),
    )
    return result.model_copy(update={"artifacts": [artifact]})
