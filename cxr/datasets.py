"""Decoded splits: each split once as uint8 arrays (checksummed on disk), and the tf.data pipeline over them.

Arrays live in a folder named by (split digest, image size, decoding code), so a run with the same
data and size reuses them. Files are written under a temporary name and renamed, and every reuse
checks sizes and SHA-256 against `checksums.json`: a truncated or altered array is rebuilt, never loaded.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from cxr import CLASSES, imaging
from cxr.caching import code_version, sha256_text
from cxr.errors import DataError
from cxr.files import sha256_file, write_atomically
from cxr.splitting import SPLITS, split_digest

if TYPE_CHECKING:
    import tensorflow as tf

CHECKSUMS_NAME = "checksums.json"


# Below this many images, starting worker processes costs more than it saves.
PARALLEL_MIN_IMAGES = 1024


CHUNK_SIZE = 256


class SplitArrays(BaseModel):
    """One split's arrays; `sha256` covers both files (digest of their two digests)."""

    images: Path
    labels: Path
    n: int
    sha256: str


class BatchesResult(BaseModel):
    root: Path
    digest: str
    image_size: int
    splits: dict[str, SplitArrays]

    def is_intact(self) -> bool:
        """Whether every split's arrays still match their recorded checksums."""
        return all(
            (found := _verified(entry.images.parent)) is not None and found.sha256 == entry.sha256
            for entry in self.splits.values()
        )


def decode_paths(paths: list[str], size: int) -> np.ndarray:
    """Images as uint8 (len(paths), size, size); the unit of work of a worker process."""
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = imaging.load_greyscale(Path(path), size)
    return images


def decode_all(paths: list[str], size: int, workers: int | None) -> np.ndarray:
    """Decode in worker processes over chunks when there are enough images to pay for them."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < PARALLEL_MIN_IMAGES:
        return decode_paths(paths, size)
    chunks = [paths[start : start + CHUNK_SIZE] for start in range(0, len(paths), CHUNK_SIZE)]
    # spawn, not fork: the parent may already run Prefect/TensorFlow threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(decode_paths, chunks, [size] * len(chunks)))
    return np.concatenate(parts)


def batches_key(digest: str, image_size: int) -> str:
    """Folder name: what decides the arrays' content (data, size, decoding code)."""
    return sha256_text(f"{digest}:{image_size}:{code_version(['cxr.imaging', __name__])}")[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the checksum record vouches for it


def _combined(first: str, second: str) -> str:
    return sha256_text(first + second)


def _verified(folder: Path) -> SplitArrays | None:
    """The split's arrays if `checksums.json` vouches for both files as they are now, else None."""
    try:
        record = json.loads((folder / CHECKSUMS_NAME).read_text())
        files = {name: folder / name for name in ("images.npy", "labels.npy")}
        for name, path in files.items():
            if path.stat().st_size != record[name]["size"] or sha256_file(path) != record[name]["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SplitArrays(
        images=files["images.npy"],
        labels=files["labels.npy"],
        n=record["n"],
        sha256=_combined(record["images.npy"]["sha256"], record["labels.npy"]["sha256"]),
    )


def _write_split(folder: Path, rows: pd.DataFrame, size: int, workers: int | None) -> SplitArrays:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKSUMS_NAME).unlink(missing_ok=True)  # no stale record may vouch for half-written files
    images = decode_all(rows["path"].tolist(), size, workers)[..., np.newaxis]
    labels = rows["label"].map(CLASSES.index).to_numpy(dtype=np.int8)
    record: dict[str, Any] = {"n": len(rows), "image_size": size}
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        write_atomically(folder / name, lambda tmp, array=array: _save_npy(tmp, array))
        record[name] = {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
    write_atomically(folder / CHECKSUMS_NAME, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    verified = _verified(folder)
    if verified is None:
        raise OSError(f"arrays in {folder} changed while being written")
    return verified


def materialise_batches(
    split_path: Path, out_root: Path, *, image_size: int, workers: int | None = None
) -> BatchesResult:
    """Decode every split of the split manifest to `images.npy`/`labels.npy`, reusing verified arrays."""
    split = pd.read_parquet(split_path)
    unknown = sorted(set(split["label"]) - set(CLASSES))
    if unknown:
        raise DataError(f"unknown labels {unknown} in {split_path}; expected {list(CLASSES)}")
    digest = split_digest(split)
    root = Path(out_root) / batches_key(digest, image_size)
    arrays = {}
    for name in SPLITS:
        rows = split[split["split"] == name].sort_values("sha256", kind="stable")
        folder = root / name
        found = _verified(folder)
        arrays[name] = (
            found
            if found is not None and found.n == len(rows)
            else _write_split(folder, rows, image_size, workers)
        )
    return BatchesResult(root=root, digest=digest, image_size=image_size, splits=arrays)


def load_split(batches: BatchesResult, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's (images uint8 (N,S,S,1), labels int8 (N,)) as written by `materialise_batches`."""
    if name not in batches.splits:
        raise DataError(f"no split '{name}' in {batches.root}; have {sorted(batches.splits)}")
    entry = batches.splits[name]
    images, labels = np.load(entry.images), np.load(entry.labels)
    size = batches.image_size
    if images.shape != (entry.n, size, size, 1) or labels.shape != (entry.n,):
        raise DataError(f"arrays of split '{name}' in {batches.root} have unexpected shapes {images.shape}")
    return images, labels


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
    import keras
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    augment_batch = (
        (lambda batch: augment(batch, training=True)) if isinstance(augment, keras.Layer) else augment
    )

    def prepare(batch_images: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images = tf.cast(batch_images, tf.float32)
        if augment_batch is not None:
            batch_images = augment_batch(batch_images)
        targets = (
            tf.one_hot(tf.cast(batch_labels, tf.int32), len(CLASSES))
            if one_hot
            else tf.cast(batch_labels, tf.int32)
        )
        return batch_images, targets

    return (
        dataset.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    )
