"""The one scorer: P(pneumonia), the domain verdict and the `decision` of images, for every answer that leaves.

`cxr predict`, the registered pyfunc (and so `mlflow models serve`), evaluation and the gate all score through
`ImageScorer`: one forward pass (`cxr.evaluation.domain.DomainScorer`) gives the softmax and the domain score;
the model's metadata gives the pneumonia output, the threshold in force (its default operating point's, or a
named one), the referral band and the smallest image side it accepts. The label rule and the decision come from
`cxr.model.referral`, so every output applies the same ones.

This module travels with the registered pyfunc (`cxr.registry.pyfunc_model`): numpy only, Keras imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr import CLASSES, PNEUMONIA
from cxr.evaluation.domain import MIN_SIDE_KEY, DomainGuard, DomainScorer, domain_verdicts
from cxr.model.operating_points import select
from cxr.model.referral import SCORED, decide, label_for, referral_band

# P(pneumonia) is `probability` in `cxr predict`'s CSV and `p_pneumonia` in the pyfunc: each output carries both.
PROBABILITY_COLUMNS = ("probability", "p_pneumonia")
# The operating point named in outputs scored at a threshold given by hand (`cxr evaluate`'s override).
EXPLICIT_THRESHOLD = "explicit-threshold"


def pneumonia_index(metadata: dict[str, Any]) -> int:
    """The network output that is P(pneumonia), from the classes the model was saved with."""
    return list(metadata.get("classes", CLASSES)).index(PNEUMONIA)


def min_image_side(metadata: dict[str, Any]) -> int:
    """The smallest image side the model accepts (that of its run's ingest); models saved without it refuse none."""
    return int(metadata.get(MIN_SIDE_KEY, 0))


@dataclass(frozen=True)
class Scores:
    """Per image: P(pneumonia), the domain verdict (None / NaN without a domain score), the label and the decision."""

    p_pneumonia: np.ndarray
    in_domain: list[bool | None]
    domain_score: np.ndarray
    labels: list[str]
    decisions: list[str]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image: both probability names, label, decision, in_domain, domain_score."""
        return [
            {
                **dict.fromkeys(PROBABILITY_COLUMNS, float(p)),
                "label": label,
                "decision": decision,
                "in_domain": inside,
                "domain_score": float(score),
            }
            for p, label, decision, inside, score in zip(
                self.p_pneumonia, self.labels, self.decisions, self.in_domain, self.domain_score, strict=True
            )
        ]

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        return cls(
            np.concatenate([np.empty(0), *(part.p_pneumonia for part in parts)]),
            [inside for part in parts for inside in part.in_domain],
            np.concatenate([np.empty(0), *(part.domain_score for part in parts)]),
            [label for part in parts for label in part.labels],
            [decision for part in parts for decision in part.decisions],
        )


class ImageScorer:
    """Scores raw 0..255 grey images already at the model's `image_size` (decoding is the caller's: files, bytes
    or arrays each have their own refusals)."""

    def __init__(self, network, metadata: dict[str, Any]):  # noqa: ANN001 - a keras.Model
        self.metadata = metadata
        self.image_size = int(metadata["image_size"])
        self.min_side = min_image_side(metadata)
        self.pneumonia_index = pneumonia_index(metadata)
        self.band = referral_band(metadata)
        self.domain = DomainScorer(network, DomainGuard.from_metadata(metadata))

    def operating_point(self, name: str | None = None, threshold: float | None = None) -> tuple[str, float]:
        """(name, threshold) of the model's point `name` (None: its default, the threshold in force), or of an
        explicit `threshold` when one is given."""
        if threshold is not None:
            return EXPLICIT_THRESHOLD, float(threshold)
        return select(self.metadata, name)

    def score(self, images: np.ndarray, threshold: float) -> Scores:
        """Scores of images (N, S, S[, 1]) at `threshold` (see `operating_point`)."""
        images = np.asarray(images, dtype=np.float32).reshape(
            len(images), self.image_size, self.image_size, 1
        )
        if not len(images):
            return Scores.concat([])
        softmax, domain_scores = self.domain.predict(images)
        p_pneumonia = np.asarray(softmax[:, self.pneumonia_index], dtype=float)
        verdicts = domain_verdicts(self.domain.guard, domain_scores, len(images))
        in_domain = [verdict["in_domain"] for verdict in verdicts]
        return Scores(
            p_pneumonia,
            in_domain,
            np.array([verdict["domain_score"] for verdict in verdicts], dtype=float),
            [label_for(p, threshold) for p in p_pneumonia],
            [
                decide(SCORED, p, threshold, inside, self.band)
                for p, inside in zip(p_pneumonia, in_domain, strict=True)
            ],
        )
