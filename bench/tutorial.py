"""The tutorial's input pipeline and 3-channel CNN, rebuilt as the baseline our pipeline is compared with."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import keras

from cxr import CLASSES

TUTORIAL_BATCH_SIZE = 10


def tutorial_model(seed_model: keras.Model) -> keras.Model:
    """The seed architecture on 3-channel input, without our grey->VGG16 layer; compiled like `seed_model`.

    Fresh copies of every layer after the preprocessing one, so the arithmetic per image is the same.
    """
    layers_after_preprocessing = seed_model.layers[2:]
    size = seed_model.input_shape[1]
    inputs = keras.Input((size, size, 3), name="image_rgb")
    x = inputs
    for layer in layers_after_preprocessing:
        x = layer.__class__.from_config(layer.get_config())(x)
    model = keras.Model(inputs, x, name="tutorial")
    model.compile_from_config(seed_model.get_compile_config())
    return model


def link_class_folders(paths_by_label: dict[str, list[str]], out_dir: Path) -> Path:
    """`out_dir/<class>/` holding symlinks to the given files: the layout `flow_from_directory` reads."""
    for label, paths in paths_by_label.items():
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            os.symlink(path, folder / f"{index:06d}{Path(path).suffix.lower()}")
    return out_dir


def tutorial_generator(
    folder: Path, *, image_size: int, batch_size: int = TUTORIAL_BATCH_SIZE, seed: int = 0
):
    """The tutorial's `ImageDataGenerator(preprocess_input).flow_from_directory(...)`, as it wrote it."""
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        preprocessing_function=tf.keras.applications.vgg16.preprocess_input
    )
    # Keras prints "Found N images ..." on stdout, which `--json` keeps for the JSON object alone.
    with contextlib.redirect_stdout(sys.stderr):
        return generator.flow_from_directory(
            directory=str(folder),
            target_size=(image_size, image_size),
            classes=list(CLASSES),
            batch_size=batch_size,
            seed=seed,
        )
