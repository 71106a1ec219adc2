"""FLOP counts of a Keras model (analytic, conv + dense) and the machine's float32 matmul rate in TF."""

from __future__ import annotations

import math
import time

import keras

# Backward pass = gradients w.r.t. inputs and w.r.t. weights, each costing about one forward pass.
TRAINING_FLOPS_PER_FORWARD = 3


def forward_flops(model: keras.Model) -> int:
    """FLOPs (2 per multiply-add) of one image through the model's conv and dense layers.

    Element-wise work (activations, batch norm, pooling) is left out: it is a few % of a CNN's
    arithmetic, and leaving it out makes the efficiency figure conservative.
    """
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = math.prod(layer.kernel_size)
            total += 2 * _spatial(layer.output.shape) * layer.output.shape[-1] * kernel
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
            total += 2 * _spatial(layer.output.shape) * layer.output.shape[-1] * kernel
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.input.shape[1:]) * layer.units
    return total


def training_flops(model: keras.Model) -> int:
    """FLOPs of one training step per image (forward + backward)."""
    return TRAINING_FLOPS_PER_FORWARD * forward_flops(model)


def matmul_flops_per_second(size: int = 2048, repeats: int = 8) -> float:
    """Best rate of a (size x size) @ (size x size) float32 matmul in TF (one warm-up call first)."""
    import tensorflow as tf

    a = tf.random.uniform((size, size), dtype=tf.float32)
    b = tf.random.uniform((size, size), dtype=tf.float32)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()
    fastest = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()  # .numpy() waits for the result (GPU kernels run asynchronously)
        fastest = min(fastest, time.perf_counter() - started)
    return 2 * size**3 / fastest


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _spatial(shape) -> int:
    return math.prod(shape[1:-1])
