"""tf.data pipelines: batches of float32 images and labels, streamed from a split's shards or from arrays.

Training and evaluation read shards (`split_dataset`), so memory holds the batches in flight, never
a whole split; `make_dataset` feeds arrays already in memory (benchmarks' in-memory baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr import CLASSES
from cxr.data.batches import BatchesResult
from cxr.data.shards import shard_batches

if TYPE_CHECKING:
    import tensorflow as tf


def split_dataset(
    batches: BatchesResult,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: Callable[..., Any] | None = None,
    one_hot: bool = True,
    image_size: int | None = None,
) -> tf.data.Dataset:
    """Batches of `split` read from its shards, prepared as `make_dataset` prepares them.

    `image_size`: resize to this side (a model trained at another size scoring these images).
    """
    shards = batches.shards(split)
    batched = shard_batches(shards, batch_size=batch_size, shuffle=shuffle, seed=seed)
    resize = image_size if image_size not in (None, batches.image_size) else None
    return _prepared(batched, augment=augment, one_hot=one_hot, resize=resize)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: Callable[..., Any] | None = None,
    one_hot: bool = True,
) -> tf.data.Dataset:
    """Batches of float32 images (0..255, (S,S,1)) and labels (one-hot over CLASSES unless told otherwise).

    Everything after slicing works on whole batches, so the pipeline is as fast as feeding arrays.
    Shuffling reshuffles every epoch, in an order fixed by `seed`.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return _prepared(dataset.batch(batch_size), augment=augment, one_hot=one_hot)


def _prepared(
    batched: tf.data.Dataset, *, augment: Callable[..., Any] | None, one_hot: bool, resize: int | None = None
) -> tf.data.Dataset:
    """uint8 image batches → float32 (resized, augmented), labels → one-hot or int32; prefetched."""
    import keras
    import tensorflow as tf

    augment_batch = (
        (lambda batch: augment(batch, training=True)) if isinstance(augment, keras.Layer) else augment
    )

    def prepare(batch_images: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images = tf.cast(batch_images, tf.float32)
        if resize is not None:
            batch_images = tf.image.resize(batch_images, (resize, resize))
        if augment_batch is not None:
            batch_images = augment_batch(batch_images)
        targets = (
            tf.one_hot(tf.cast(batch_labels, tf.int32), len(CLASSES))
            if one_hot
            else tf.cast(batch_labels, tf.int32)
        )
        return batch_images, targets

    return batched.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
