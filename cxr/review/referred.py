"""Queue what the model would not answer alone: the `refer` and `out_of_domain` rows of a prediction."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cxr.data.scanning import real_path
from cxr.model.referral import OUT_OF_DOMAIN, REFER
from cxr.review.queue import enqueue

REVIEWED_DECISIONS = (REFER, OUT_OF_DOMAIN)


def referring_version(model_uri: str) -> str:
    """The immutable name of the model that answered: `models:/NAME/N` for a registry URI (an alias as it
    points now), else the URI or path as given."""
    if not model_uri.startswith("models:/"):
        return model_uri
    from cxr.core.state_folder import default_tracking_uri
    from cxr.model.loading import registered_version

    version = registered_version(model_uri, default_tracking_uri())
    return f"models:/{version.name}/{version.version}"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: object) -> float | None:
    return None if _missing(value) else float(value)


def _text(value: object) -> str | None:
    return None if _missing(value) else str(value)


def queue_referred(frame: pd.DataFrame, model_uri: str) -> int:
    """Queue every row of a prediction frame (`cxr.evaluation.predicting`) made by the model at `model_uri`
    whose `decision` is refer or out_of_domain, with its answer and overlay; the number of new items (a
    frame without decisions: 0)."""
    if "decision" not in frame.columns:
        return 0
    referred = frame[frame["decision"].isin(REVIEWED_DECISIONS)]
    model_version = referring_version(model_uri) if len(referred) else model_uri
    added = 0
    for row in referred.to_dict("records"):
        added += enqueue(
            Path(real_path(row["path"])),
            origin="predict",
            decision=row["decision"],
            model_version=model_version,
            model_label=_text(row.get("label")),
            probability=_number(row.get("probability")),
            domain_score=_number(row.get("domain_score")),
            heatmap=_text(row.get("heatmap")),
        )
    return added
