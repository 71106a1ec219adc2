"""Tiny hand-weighted models ('bright blob', brightness) and the images they score, built inside tests.

The model's P(pneumonia) rises only where a bright blob is, so both its labels and its Grad-CAM map
have a known right answer without training. Keras loads only when a model is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cxr import CLASSES

if TYPE_CHECKING:
    import keras

SIZE = 32
THRESHOLD = 0.5
DARK, BRIGHT = 30, 230
# Ingest quarantines images below 64 px; the model works at 32 px, so batches downscale them.
LABELLED_SIDE = 64


def toy_model(size: int, *, bright_filter: bool, weight: float, bias: float) -> keras.Model:
    """Raw 0..255 grey in, the project's 2-way softmax out: rescale, optionally a conv that fires on pixels
    brighter than mid-grey (layer `bright`), average, then logit gap (pneumonia - normal) = 2 * (weight *
    mean + bias)."""
    import keras

    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if bright_filter:
        x = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="bright")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    if bright_filter:
        model.get_layer("bright").set_weights(
            [np.full((3, 3, 1, 1), 1 / 9, "float32"), np.array([-0.5], "float32")]
        )
    model.layers[-1].set_weights(
        [np.array([[weight, -weight]], "float32"), np.array([bias, -bias], "float32")]
    )
    return model


def blob_model(size: int = SIZE) -> keras.Model:
    """More bright area, more pneumonia: logit gap = 400 * mean bright response - 2, about -2 without a blob,
    +6 with one."""
    return toy_model(size, bright_filter=True, weight=200.0, bias=-1.0)


def write_blob_model(folder: Path, size: int = SIZE) -> Path:
    """model.keras + model.json as the training stage writes them; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    blob_model(size).save(folder / "model.keras")
    metadata = {"model_name": "blob", "image_size": size, "classes": list(CLASSES), "threshold": THRESHOLD}
    (folder / "model.json").write_text(json.dumps(metadata))
    return folder


def blob_image(size: int, *, blob: bool, corner: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A dark (size, size) uint8 image, with a bright square a quarter of the side wide when `blob`."""
    image = np.full((size, size), DARK, np.uint8)
    if blob:
        side = size // 4
        row, col = corner
        image[row : row + side, col : col + side] = BRIGHT
    return image


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def labelled_folder(root: Path, *, pneumonia: int, normal: int) -> Path:
    """Bare NORMAL/PNEUMONIA layout: pneumonia images carry the blob the model looks for."""
    for index in range(pneumonia):
        corner = (index * 5 % 40, index * 11 % 40)
        write_png(
            root / "PNEUMONIA" / f"person{index}_bacteria_{index}.png",
            blob_image(LABELLED_SIDE, blob=True, corner=corner),
        )
    for index in range(normal):
        image = blob_image(LABELLED_SIDE, blob=False)
        image[index, :] = 60  # distinct content: identical files would be quarantined as duplicates
        write_png(root / "NORMAL" / f"IM-{index:04d}-0001.png", image)
    return root


def brightness_model(gain: float) -> keras.Model:
    """P(pneumonia) rises with mean brightness (gain > 0), on (SIZE, SIZE, 1)."""
    return toy_model(SIZE, bright_filter=False, weight=gain, bias=-gain / 2)


def save_model(model, folder: Path, threshold: float = 0.5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(
        json.dumps({"model_name": "tiny", "image_size": SIZE, "threshold": threshold})
    )
    return folder / "model.keras"


def bright_dark_images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pneumonia (label 0) images bright, normal (label 1) dark, with overlapping noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int8)
    means = np.where(labels == 0, 150, 105) + rng.normal(0, 20, n)
    images = np.clip(means[:, None, None, None] + rng.normal(0, 10, (n, SIZE, SIZE, 1)), 0, 255)
    return images.astype(np.uint8), labels
