"""Batches: decoded once into verified arrays, reused by content, fed to Keras as fast tf.data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from cxr import CLASSES, NORMAL, PNEUMONIA
from cxr import datasets as batches_module
from cxr.datasets import load_split, make_dataset, materialise_batches

SIZE = 16


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    """Stub decoder: an image whose every pixel is the file's index (so order can be checked)."""
    calls: list[str] = []

    def fake_load_greyscale(path, size):
        calls.append(str(path))
        return np.full((size, size), int(path.stem.split("-")[1]), dtype=np.uint8)

    monkeypatch.setattr(batches_module.imaging, "load_greyscale", fake_load_greyscale)
    return calls


@pytest.fixture
def split_path(tmp_path):
    labels = [PNEUMONIA, NORMAL] * 12
    splits = ["train"] * 16 + ["valid"] * 4 + ["test"] * 4
    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / f"img-{i}.jpeg") for i in range(len(labels))],
            "label": labels,
            "patient_id": [f"p{i}" for i in range(len(labels))],
            "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(labels))],
            "split": splits,
        }
    )
    path = tmp_path / "split.parquet"
    frame.to_parquet(path)
    return path


def test_arrays_have_contract_shapes_dtypes_and_labels(tmp_path, split_path, decode_calls):
    result = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE)
    assert {name: entry.n for name, entry in result.splits.items()} == {"train": 16, "valid": 4, "test": 4}
    images, labels = load_split(result, "train")
    assert images.dtype == np.uint8 and images.shape == (16, SIZE, SIZE, 1)
    assert labels.dtype == np.int8 and set(labels) == {0, 1}
    # Label index follows CLASSES, and each image belongs to its own row's label.
    index = images[:, 0, 0, 0].astype(int)
    assert all(
        CLASSES[label] == (PNEUMONIA if i % 2 == 0 else NORMAL)
        for i, label in zip(index, labels, strict=True)
    )
    assert result.root.parent == tmp_path / "batches" and len(result.root.name) == 16
    checksums = json.loads((result.root / "train" / "checksums.json").read_text())
    assert (
        checksums["images.npy"]["sha256"]
        == hashlib.sha256((result.root / "train" / "images.npy").read_bytes()).hexdigest()
    )


def test_reuse_skips_decoding_and_other_size_gets_its_own_folder(tmp_path, split_path, decode_calls):
    first = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE)
    decoded = len(decode_calls)
    second = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE)
    assert len(decode_calls) == decoded == 24
    assert second == first
    bigger = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE * 2)
    assert bigger.root != first.root and len(decode_calls) == 48


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_checksums"])
def test_damaged_arrays_are_rebuilt_not_loaded(tmp_path, split_path, decode_calls, damage):
    first = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE)
    target = first.splits["valid"].images
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (target.parent / "checksums.json").unlink()
    decode_calls.clear()
    again = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE)
    assert len(decode_calls) == 4  # only the damaged split
    assert again == first
    np.testing.assert_array_equal(load_split(again, "valid")[0], load_split(first, "valid")[0])


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    from PIL import Image

    paths = []
    for i in range(6):
        path = tmp_path / f"img-{i}.png"
        Image.fromarray(np.full((20, 20), i * 40, dtype=np.uint8)).save(path)
        paths.append(str(path))
    monkeypatch.setattr(batches_module, "PARALLEL_MIN_IMAGES", 2)
    monkeypatch.setattr(batches_module, "CHUNK_SIZE", 2)
    parallel = batches_module.decode_all(paths, SIZE, workers=2)
    np.testing.assert_array_equal(parallel, batches_module.decode_paths(paths, SIZE))
    assert parallel.shape == (6, SIZE, SIZE) and parallel[3, 0, 0] == 120


def test_make_dataset_batches_one_hot_and_reshuffles(split_path):
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
