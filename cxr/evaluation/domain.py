"""Is an image like those the model was trained on? A domain score per image, stored in `model.json`.

Three Gaussian models of the training images, one per component:
- `network`: the network's own features, the global average of its last feature map before the head (what
  the classifier "sees");
- `network_peak`: the global maximum of the same map, per channel: how strongly each feature fires anywhere
  (an average hides a strong local response; adult anatomy and other sources' films set off other peaks);
- `image`: cheap image descriptors, a 4x4 thumbnail, 16 row and 16 column mean profiles (where the body and
  the lungs lie) and 16 statistics (intensity quantiles, dark/bright shares, centre-vs-border and
  top/bottom/left/right contrasts, edge energy): blank, noise, inverted, rotated or cropped images stand out.
Each component's distance is the squared Mahalanobis distance per dimension to the training images under a
Ledoit-Wolf shrinkage covariance of the standardised features, divided by its own validation quantile; the
image's `domain_score` is their weighted sum (`COMPONENTS`). Scores above `threshold` (the same quantile of the
validation images' scores) are out of domain. The network's features are averages and maxima of rectified maps,
far from Gaussian (many near zero, a long right tail); a signed log brings them closer. Each component reads its
features by name (`FEATURES`): a guard stored with fewer components (before `network_peak`) scores as it did.

This module travels with the registered pyfunc (`cxr.registry.pyfunc_model`): numpy only, Keras imported lazily.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

METADATA_KEY = "domain"
# The smallest image side the run's ingest accepted (model.json, beside the guard): smaller inputs are refused as
# `too_small` rather than stretched to the model's size. Models saved without it refuse none.
MIN_SIDE_KEY = "min_image_side"


@dataclass(frozen=True)
class Component:
    """One part of the score: the features it reads, how they are transformed, its weight in the sum."""

    name: str  # also the features it reads: a key of FEATURES
    transform: str  # a key of TRANSFORMS
    weight: float


# Features per component name, in the order `_forward_pass` returns them after the softmax.
FEATURES = ("network", "network_peak", "image")
# Weights chosen on paediatric development images and a design part of adult X-rays (docs/domain-score.md):
# each component alone flags 80-86 % of adults, their sum more than any of them.
COMPONENTS = (
    Component("network", "signed_log", 0.4),
    Component("network_peak", "signed_log", 0.3),
    Component("image", "identity", 0.3),
)
TRANSFORMS = {
    "identity": lambda values: values,
    "signed_log": lambda values: np.sign(values) * np.log1p(np.abs(values)),
}
# Side of the coarse grid whose row and column means are the image's profiles (its 4x4 cells: the thumbnail).
PROFILE_CELLS = 16
THUMBNAIL_CELLS = 4
# Quantiles of the intensity distribution the statistics keep.
QUANTILES = (1, 5, 25, 50, 75, 95, 99)
STATISTICS_SIDE = 32
DARK, BRIGHT = 16.0, 240.0
# A feature's standard deviation below this (in its own units) counts as this, so constant features do not
# divide by zero.
MIN_SCALE = 1e-6
FEATURE_BATCH = 64


def image_statistics(grey: np.ndarray) -> np.ndarray:
    """(N, 16) float64 statistics of (N, s, s) grey images on 0..1."""
    flat = grey.reshape(len(grey), -1)
    side = grey.shape[1]
    third, quarter = max(1, side // 3), max(1, side // 4)
    centre = grey[:, quarter : -quarter or None, quarter : -quarter or None].mean(axis=(1, 2))
    columns = [
        flat.mean(axis=1),
        flat.std(axis=1),
        *np.percentile(flat, QUANTILES, axis=1),
        (flat < DARK / 255).mean(axis=1),
        (flat > BRIGHT / 255).mean(axis=1),
        centre - flat.mean(axis=1),
        grey[:, :third].mean(axis=(1, 2)) - grey[:, -third:].mean(axis=(1, 2)),
        grey[:, :, :third].mean(axis=(1, 2)) - grey[:, :, -third:].mean(axis=(1, 2)),
        np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2)),
        np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2)),
    ]
    return np.stack(columns, axis=1).astype(np.float64)


def cell_means(grey: np.ndarray, cells: int) -> np.ndarray:
    """(N, cells, cells) means of nearly equal blocks of (N, S, S) images (S >= cells)."""
    if grey.shape[1:] == (cells, cells):
        return grey
    edges = np.linspace(0, grey.shape[1], cells + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(grey, edges, axis=1), edges, axis=2)
    counts = np.outer(np.diff([*edges, grey.shape[1]]), np.diff([*edges, grey.shape[2]]))
    return sums / counts


def image_descriptors(images: np.ndarray) -> np.ndarray:
    """(N, 64) float64 of (N, S, S[, 1]) grey images on 0..255: a 4x4 thumbnail, 16 row and 16 column means,
    and 16 statistics of the image reduced to at most 32 px (block means: cheap beside the network's pass)."""
    grey = np.asarray(images, dtype=np.float32).reshape(len(images), *np.shape(images)[1:3]) / 255.0
    small = cell_means(grey, min(STATISTICS_SIDE, grey.shape[1]))
    grid = cell_means(small, PROFILE_CELLS)
    step = PROFILE_CELLS // THUMBNAIL_CELLS
    thumbnail = grid.reshape(len(grey), THUMBNAIL_CELLS, step, THUMBNAIL_CELLS, step).mean(axis=(2, 4))
    return np.concatenate(
        [thumbnail.reshape(len(grey), -1), grid.mean(axis=2), grid.mean(axis=1), image_statistics(small)],
        axis=1,
    ).astype(np.float64)


def ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrinkage covariance of centred samples (N, P), as scikit-learn computes it."""
    n, p = centred.shape
    empirical = centred.T @ centred / n
    mu = np.trace(empirical) / p
    squares = centred**2
    beta = np.sum(squares.T @ squares) / n - np.sum(empirical**2)
    delta = (np.sum(empirical**2) - 2 * mu * np.trace(empirical) + p * mu**2) / p
    beta = min(beta / (p * n), delta)
    shrinkage = 0.0 if delta == 0 else beta / delta
    return (1 - shrinkage) * empirical + shrinkage * mu * np.eye(p)


@dataclass(frozen=True)
class Gaussian:
    """One component: standardisation, the inverse shrinkage covariance, and its validation quantile."""

    name: str
    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    reference: float = 1.0  # the component's distance at the validation quantile; scores divide by it
    # Guards stored before components had a transform and a weight read as identity and 1 (see from_json).
    transform: str = "identity"
    weight: float = 1.0

    @classmethod
    def fit(cls, component: Component, features: np.ndarray) -> Gaussian:
        features = TRANSFORMS[component.transform](np.asarray(features, dtype=np.float64))
        mean = features.mean(axis=0)
        scale = np.maximum(features.std(axis=0), MIN_SCALE)
        covariance = ledoit_wolf((features - mean) / scale)
        precision = np.linalg.pinv(covariance, hermitian=True)
        return cls(
            component.name, mean, scale, precision, transform=component.transform, weight=component.weight
        )

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance per dimension (about 1 for a typical training image)."""
        values = TRANSFORMS[self.transform](np.asarray(features, dtype=np.float64))
        standard = (values - self.mean) / self.scale
        # einsum, not a BLAS product: right after TensorFlow's pass, BLAS threads compete with its spinning
        # thread pool and a small product takes ten times longer.
        return np.einsum("ij,jk,ik->i", standard, self.precision, standard) / len(self.mean)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "reference": self.reference,
            "transform": self.transform,
            "weight": self.weight,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gaussian:
        return cls(
            data["name"],
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["precision"], dtype=np.float64),
            float(data["reference"]),
            data.get("transform", "identity"),
            float(data.get("weight", 1.0)),
        )


@dataclass(frozen=True)
class DomainGuard:
    """The fitted score: the layer whose features it reads, one Gaussian per component, the threshold."""

    layer: str
    components: tuple[Gaussian, ...]  # COMPONENTS order
    threshold: float
    quantile: float
    summary: dict[str, Any]

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features each component reads, in order (what `DomainScorer.features` returns for the guard)."""
        return tuple(part.name for part in self.components)

    def scores(self, features: list[np.ndarray]) -> np.ndarray:
        """Domain score per image from its per-component features (in `DomainScorer.features` order)."""
        distances = [
            part.weight * part.distance(values) / part.reference
            for part, values in zip(self.components, features, strict=True)
        ]
        return np.sum(distances, axis=0)

    def in_domain(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def flagged_share(self, features: list[np.ndarray]) -> float:
        """The share of images (given by their per-component features) out of domain."""
        return float(np.mean(~self.in_domain(self.scores(features))))

    def to_json(self) -> dict[str, Any]:
        return {
            "score": "weighted sum over components of (squared Mahalanobis distance per dimension of the "
            "transformed features / its validation quantile)",
            "layer": self.layer,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "summary": self.summary,
            "components": [part.to_json() for part in self.components],
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> DomainGuard | None:
        """The guard stored in a model's metadata; None for a model saved without one."""
        data = metadata.get(METADATA_KEY)
        if not data:
            return None
        return cls(
            data["layer"],
            tuple(Gaussian.from_json(part) for part in data["components"]),
            float(data["threshold"]),
            float(data["quantile"]),
            dict(data.get("summary", {})),
        )


def domain_verdicts(guard: DomainGuard | None, scores: np.ndarray | None, n: int) -> list[dict[str, Any]]:
    """`in_domain` and `domain_score` per scored image; None and NaN where the model has no domain score."""
    if guard is None or scores is None:
        return [{"in_domain": None, "domain_score": np.nan}] * n
    return [
        {"in_domain": bool(inside), "domain_score": float(score)}
        for inside, score in zip(guard.in_domain(scores), scores, strict=True)
    ]


def fit_guard(
    fit: list[np.ndarray], calibration: list[np.ndarray], *, layer: str, quantile: float
) -> DomainGuard:
    """Fit each component on the `fit` images' features; scale and threshold on the `calibration` images' (in
    domain, not used to fit)."""
    fitted = []
    for component, fit_part, calibration_part in zip(COMPONENTS, fit, calibration, strict=True):
        part = Gaussian.fit(component, fit_part)
        reference = float(np.quantile(part.distance(calibration_part), quantile, method="higher"))
        fitted.append(replace(part, reference=max(reference, MIN_SCALE)))
    guard = DomainGuard(layer, tuple(fitted), 1.0, quantile, {})
    threshold = float(np.quantile(guard.scores(calibration), quantile, method="higher"))
    guard = DomainGuard(layer, tuple(fitted), threshold, quantile, {})
    guard.summary.update(
        fit_images=len(fit[-1]),
        calibration_images=len(calibration[-1]),
        fit_flagged_share=guard.flagged_share(fit),
        calibration_flagged_share=guard.flagged_share(calibration),
    )
    return guard


def feature_layer(network) -> str:  # noqa: ANN001 - a keras.Model
    """The network's last layer with a 4-D (feature map) output: its features summarise the image."""
    import keras

    maps = [
        layer.name
        for layer in network.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]
    if not maps:
        raise ValueError(f"model {network.name!r} has no feature map for a domain score")
    return maps[-1]


class DomainScorer:
    """One forward pass giving the softmax and the pooled features of `layer` (default: the guard's; none
    without a guard)."""

    def __init__(self, network, guard: DomainGuard | None = None, layer: str | None = None):  # noqa: ANN001
        self.network, self.guard = network, guard
        self.layer = layer or (guard.layer if guard else None)
        self.feature_names = guard.feature_names if guard else tuple(part.name for part in COMPONENTS)
        self._forward = _forward_pass(network, self.layer)

    def features(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(softmax (N, classes), per-component features in `feature_names` order: the guard's components,
        else `COMPONENTS`) of raw 0..255 images (N, S, S, 1); no features without a layer."""
        images = np.asarray(images, dtype=np.float32)
        outputs = [
            [np.asarray(part) for part in self._forward(images[start : start + FEATURE_BATCH])]
            for start in range(0, len(images), FEATURE_BATCH)
        ]
        if not outputs:
            return np.empty((0, 0)), []
        columns = [np.concatenate(parts) for parts in zip(*outputs, strict=True)]
        if not self.layer:
            return columns[0], []
        available = dict(zip(FEATURES, [*columns[1:-1], image_descriptors(columns[-1])], strict=True))
        return columns[0], [available[name] for name in self.feature_names]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(softmax, domain score per image; None for a model without a guard)."""
        probabilities, features = self.features(images)
        if self.guard is None:
            return probabilities, None
        return probabilities, self.guard.scores(features) if len(images) else np.empty(0)


# One traced forward pass per live network and feature layer, shared by every scorer: tracing costs about as
# much as scoring a few hundred images, and `cxr predict` builds a scorer per call.
_FORWARD_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward_pass(network, layer: str | None):  # noqa: ANN001, ANN202 - a keras.Model; a tf.function
    """`[softmax, per-channel mean and maximum of layer, the image reduced to at most 32 px]` (just `[softmax]`
    without a layer) as one graph for any batch: the reduction runs in TensorFlow, much faster than in numpy."""
    import keras
    import tensorflow as tf

    passes = _FORWARD_PASSES.setdefault(network, {})
    if layer not in passes:
        extra = []
        if layer:
            image, side = network.inputs[0], min(STATISTICS_SIDE, network.input_shape[1])
            feature_map = network.get_layer(layer).output
            extra = [
                keras.ops.mean(feature_map, axis=(1, 2)),
                keras.ops.max(feature_map, axis=(1, 2)),
                keras.ops.image.resize(image, (side, side), interpolation="area"),
            ]
        extractor = keras.Model(network.inputs, [network.output, *extra])
        passes[layer] = tf.function(
            # A list even with no pooled layer (a one-output model returns a bare tensor).
            lambda batch: tf.nest.flatten(extractor(batch, training=False)),
            input_signature=[tf.TensorSpec((None, *network.input_shape[1:]), tf.float32)],
            autograph=False,
        )
    return passes[layer]
