"""Referral: the images the model should not answer alone, and the one `decision` every output carries.

A model's `model.json` may store a referral band, a half-open interval [low, high) of P(pneumonia) around
its threshold, as
    referral: {low, high, ...how it was fitted}
An in-domain image whose probability falls inside the band is referred to a reader.

`decision` is what a consumer that reads one field should read: `pneumonia` or `normal` only when the
system answers alone, otherwise `refer`, `out_of_domain`, or the refusal status (`too_small`, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

PNEUMONIA = "pneumonia"
NORMAL = "normal"
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
    return PNEUMONIA if p_pneumonia >= threshold else NORMAL
