"""tf.data pipelines: batches streamed from a split's shards, or from arrays, prepared the same way."""

from __future__ import annotations

import numpy as np

from cxr.data.batches import write_batches
from cxr.data.datasets import make_dataset, split_dataset


def test_split_dataset_streams_every_image_once_one_hot_and_resizes(tmp_path):
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, axis=1).repeat(4, axis=2)
    labels = np.array([0, 1] * 5, dtype=np.int8)
    batches = write_batches(tmp_path / "batches", {"train": (images, labels)}, shard_images=3)
    dataset = split_dataset(batches, "train", batch_size=4, shuffle=True, seed=1)
    seen = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert [x.shape for x, _ in seen] == [(4, 4, 4, 1), (4, 4, 4, 1), (2, 4, 4, 1)]
    assert seen[0][0].dtype == np.float32 and seen[0][1].shape == (4, 2)
    order = np.concatenate([x[:, 0, 0, 0] for x, _ in seen]).astype(int)
    assert sorted(order) == list(range(10)) and order.tolist() != list(range(10))
    np.testing.assert_array_equal(np.concatenate([y for _, y in seen]).argmax(1), order % 2)

    resized = split_dataset(
        batches, "train", batch_size=10, shuffle=False, seed=0, one_hot=False, image_size=8
    )
    x, y = next(iter(resized))
    assert x.shape == (10, 8, 8, 1) and y.dtype.name == "int32"
    assert [float(v) for v in x[:, 0, 0, 0]] == list(range(10))  # same order as written


def test_make_dataset_batches_one_hot_and_reshuffles():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, axis=1).repeat(4, axis=2)
    labels = np.array([0, 1] * 5, dtype=np.int8)
    dataset = make_dataset(images, labels, batch_size=4, shuffle=True, seed=1)
    batches = list(dataset)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 4, 4, 1), (4, 4, 4, 1), (2, 4, 4, 1)]
    x, y = batches[0]
    assert x.dtype.name == "float32" and y.shape == (4, 2)
    order = [int(v) for x, _ in batches for v in x[:, 0, 0, 0]]
    np.testing.assert_array_equal(
        np.concatenate([y.numpy() for _, y in batches]).argmax(1), np.array(order) % 2
    )
    assert sorted(order) == list(range(10))
    second_epoch = [int(v) for x, _ in dataset for v in x[:, 0, 0, 0]]
    assert order != list(range(10)) and second_epoch != order
    same_seed = [
        int(v)
        for x, _ in make_dataset(images, labels, batch_size=4, shuffle=True, seed=1)
        for v in x[:, 0, 0, 0]
    ]
    assert same_seed == order
    plain = make_dataset(
        images, labels, batch_size=10, shuffle=False, seed=0, one_hot=False, augment=lambda b: b + 1.0
    )
    x, y = next(iter(plain))
    assert [int(v) for v in x[:, 0, 0, 0]] == list(range(1, 11)) and y.dtype.name == "int32"


def test_make_dataset_runs_keras_augmentation_in_training_mode():
    import keras

    images = np.full((8, 4, 4, 1), 100, dtype=np.uint8)
    labels = np.zeros(8, dtype=np.int8)
    dataset = make_dataset(
        images, labels, batch_size=8, shuffle=False, seed=0, augment=keras.layers.GaussianNoise(1.0, seed=0)
    )
    x, _ = next(iter(dataset))
    assert float(np.abs(x.numpy() - 100).mean()) > 0.3  # noise applied only when training=True
