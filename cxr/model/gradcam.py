"""Grad-CAM heat maps: which regions of an X-ray pushed the model towards 'pneumonia'.

The map is the last Conv2D layer's activations weighted by the mean gradient of P(pneumonia) with
respect to each channel (Selvaraju et al., 2017), rectified, resized to the input and scaled to 0..1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from cxr import CLASSES
from cxr.core.errors import ModelError

PNEUMONIA_INDEX = CLASSES.index("pneumonia")
# Weight of the heat colours over the grey image in the overlay.
OVERLAY_ALPHA = 0.45
# Small model inputs are enlarged in the overlay so the label text stays legible.
OVERLAY_MIN_SIDE = 256


def last_conv_layer(model: keras.Model) -> keras.layers.Conv2D:
    """The last Conv2D in `model`'s layer order, searching nested models too."""
    found = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            found = layer
        elif hasattr(layer, "layers"):  # a nested Sequential or functional model
            found = _last_conv_or_none(layer) or found
    if found is None:
        raise ModelError(f"model {model.name!r} has no Conv2D layer, so Grad-CAM cannot explain it")
    return found


def _last_conv_or_none(model: keras.Model) -> keras.layers.Conv2D | None:
    try:
        return last_conv_layer(model)
    except ModelError:
        return None


@contextmanager
def _watching_output(layer: keras.layers.Layer, tape: tf.GradientTape, captured: list) -> Iterator[None]:
    """While active, every output of `layer` is watched by `tape` and appended to `captured`.

    Wrapping the layer's `call` reaches a conv layer inside a nested model too, where a sub-model
    `keras.Model(model.inputs, conv.output)` fails because the nested layer's output tensor belongs
    to the inner model's graph, not the outer one.
    """
    original_call = layer.call

    def call(*args, **kwargs):
        output = original_call(*args, **kwargs)
        tape.watch(output)
        captured.append(output)
        return output

    layer.call = call
    try:
        yield
    finally:
        del layer.call  # the instance attribute shadowed the class method; removing it restores that


def grad_cam(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """Grad-CAM of P(pneumonia) for one (S, S, 1) image (raw 0..255): an (S, S) float32 map in [0, 1].

    A map of zeros means no region raised P(pneumonia) (e.g. a saturated, confident 'normal').
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] != 1:
        raise ValueError(f"expected one greyscale image (S, S, 1), got shape {image.shape}")
    conv = last_conv_layer(model)
    captured: list[tf.Tensor] = []
    with tf.GradientTape() as tape, _watching_output(conv, tape, captured):
        probabilities = model(image[None], training=False)
        score = probabilities[:, PNEUMONIA_INDEX]
    activations = tf.cast(captured[-1], tf.float32)
    gradients = tf.cast(tape.gradient(score, captured[-1]), tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(activations[0] * channel_weights, axis=-1))
    cam = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = float(cam.max())
    if peak <= 0:
        return np.zeros(image.shape[:2], dtype=np.float32)
    return np.clip(cam / peak, 0.0, 1.0).astype(np.float32)


def jet_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB with matplotlib's 'jet' colour map."""
    from matplotlib import colormaps  # imported here: only heat-map output pays for matplotlib

    return (colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay_png(original_grey: np.ndarray, heat: np.ndarray, out_path: Path, *, label: str) -> Path:
    """Write the heat map blended over the grey image as a PNG, with `label` printed in the corner."""
    grey = np.asarray(original_grey)
    grey = grey[..., 0] if grey.ndim == 3 else grey
    base = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if min(base.size) < OVERLAY_MIN_SIDE:
        scale = OVERLAY_MIN_SIDE / min(base.size)
        base = base.resize((round(base.width * scale), round(base.height * scale)), Image.Resampling.BILINEAR)
    heat_image = Image.fromarray(jet_colours(heat)).resize(base.size, Image.Resampling.BILINEAR)
    blended = Image.blend(base, heat_image, OVERLAY_ALPHA)
    draw = ImageDraw.Draw(blended)
    draw.rectangle(draw.textbbox((2, 2), label), fill=(0, 0, 0))
    draw.text((2, 2), label, fill=(255, 255, 255))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    blended.save(out_path, format="PNG")
    return out_path
