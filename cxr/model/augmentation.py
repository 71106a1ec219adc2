"""Acquisition-like augmentation: what a change of scanner or site does to a radiograph.

A training-time layer of the input pipeline (`cxr.model.networks.build_augmentation`), never part of a saved model.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="cxr")
class AcquisitionShift(layers.Layer):
    """What another scanner or site changes in a radiograph, drawn per image (training only).

    A gamma curve (windowing / exposure), blur or sharpening (detector and resampling), sensor
    noise, and on some images a dark collimation border or a bright burnt-in marker block. Works on
    float 0..255 batches (N, S, S, 1) and keeps that range.
    """

    def __init__(self, border_rate: float = 0.3, marker_rate: float = 0.3, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.border_rate, self.marker_rate, self.seed = border_rate, marker_rate, seed
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, count, low: float, high: float):
        return keras.random.uniform((count, 1, 1, 1), low, high, seed=self.generator)

    def call(self, inputs, training=True):
        if not training:
            return inputs
        count, side = ops.shape(inputs)[0], ops.shape(inputs)[1]
        x = 255.0 * ops.power(ops.clip(inputs / 255.0, 0.0, 1.0), ops.exp(self._uniform(count, -0.35, 0.35)))
        taps = ops.convert_to_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        kernel = ops.reshape(taps[:, None] * taps[None, :], (5, 5, 1, 1))
        x = x + self._uniform(count, -1.0, 1.0) * (x - ops.conv(x, kernel, padding="same"))
        x = x + keras.random.normal(ops.shape(x), seed=self.generator) * self._uniform(count, 0.0, 6.0)
        position = ops.cast(ops.arange(side), "float32") / ops.cast(side, "float32")
        rows, columns = position[None, :, None, None], position[None, None, :, None]
        top, bottom, left, right = (self._uniform(count, 0.0, 0.12) for _ in range(4))
        inside = (rows >= top) & (rows <= 1 - bottom) & (columns >= left) & (columns <= 1 - right)
        framed = ops.cast(self._uniform(count, 0.0, 1.0) < self.border_rate, "float32")
        x = x * (1 - framed * (1 - ops.cast(inside, "float32")))
        near_top = self._uniform(count, 0.0, 1.0) < 0.5
        marker_row = ops.where(near_top, self._uniform(count, 0.02, 0.12), self._uniform(count, 0.85, 0.95))
        marker_column = self._uniform(count, 0.05, 0.85)
        box = (
            (rows >= marker_row)
            & (rows <= marker_row + self._uniform(count, 0.03, 0.06))
            & (columns >= marker_column)
            & (columns <= marker_column + self._uniform(count, 0.04, 0.15))
        )
        marked = ops.cast(box, "float32") * ops.cast(
            self._uniform(count, 0.0, 1.0) < self.marker_rate, "float32"
        )
        x = x * (1 - marked) + marked * self._uniform(count, 200.0, 255.0)
        return ops.clip(x, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "border_rate": self.border_rate,
            "marker_rate": self.marker_rate,
            "seed": self.seed,
        }
