"""Referral: the images the model should not answer alone, and the one `decision` every output carries.

A model's `model.json` may store a referral band, a half-open interval [low, high) of P(pneumonia) around
its threshold, as
    referral: {low, high, ...how it was fitted}
An in-domain image whose probability falls inside the band is referred to a reader.

`decision` is what a consumer that reads one field should read: `pneumonia` or `normal` only when the
system answers alone, otherwise `refer`, `out_of_domain`, or the refusal status (`too_small`, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from cxr import NORMAL, PNEUMONIA

REFER = "refer"
OUT_OF_DOMAIN = "out_of_domain"
# The status of an image that was scored; every other status is a refusal and is its own decision.
SCORED = "ok"


class ReferralBand(BaseModel):
    """P(pneumonia) in [low, high) is referred; extra keys record how the band was fitted."""

    model_config = ConfigDict(extra="allow")

    low: float
    high: float

    def refers(self, p_pneumonia: float) -> bool:
        return self.low <= p_pneumonia < self.high

    def refers_all(self, p_pneumonia: np.ndarray) -> np.ndarray:
        """`refers` for an array of probabilities."""
        p = np.asarray(p_pneumonia, dtype=np.float64)
        return (self.low <= p) & (p < self.high)


def says_pneumonia(p_pneumonia: np.ndarray, threshold: float) -> np.ndarray:
    """The label rule, for every reader of a probability: pneumonia where P(pneumonia) >= threshold."""
    return np.asarray(p_pneumonia, dtype=float) >= threshold


def label_for(p_pneumonia: float, threshold: float) -> str:
    """`pneumonia` or `normal` by the label rule (`says_pneumonia`)."""
    return PNEUMONIA if says_pneumonia(p_pneumonia, threshold) else NORMAL


def referral_band(metadata: dict[str, Any]) -> ReferralBand | None:
    """The model's referral band, or None for a model saved without one (it answers every in-domain image)."""
    stored = metadata.get("referral")
    return ReferralBand.model_validate(stored) if stored else None


def decide(
    status: str,
    p_pneumonia: float | None,
    threshold: float,
    in_domain: bool | None,
    band: ReferralBand | None,
) -> str:
    """The one decision for an image: its refusal status, out_of_domain, refer, or the label."""
    if status != SCORED or p_pneumonia is None:
        return status
    if in_domain is False:
        return OUT_OF_DOMAIN
    if band is not None and band.refers(p_pneumonia):
        return REFER
    return label_for(p_pneumonia, threshold)


def decision_counts(decisions: Iterable[str]) -> dict[str, int]:
    """Images per decision: the answers alone first (pneumonia, normal, both always present), then refer and
    out_of_domain when any, then each refusal status."""
    counts = Counter(decisions)
    answered = {name: counts.pop(name, 0) for name in (PNEUMONIA, NORMAL)}
    withheld = {name: counts.pop(name) for name in (REFER, OUT_OF_DOMAIN) if name in counts}
    return answered | withheld | dict(sorted(counts.items()))
