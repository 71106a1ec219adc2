"""Image shards: a split decoded once into `.npy` files of a few thousand images, read back by batch.

A shard is `<stem>.images.npy` (uint8 (n, S, S, 1)) and `<stem>.labels.npy` (int8 (n,)), each
written under a temporary name and renamed, then `<stem>.json` (its `ShardRef`) which vouches for
both. Readers pull the rows a batch needs with positioned reads (`os.pread`), so memory holds the
batches in flight, never a whole split or shard: peak memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from cxr.core.atomic_files import write_atomically
from cxr.core.errors import DataError
from cxr.core.stamps import FileStamp

if TYPE_CHECKING:
    import tensorflow as tf

# Images per shard: ~50 MB at 224 px, decoded in one piece by one worker (two per core stay small).
SHARD_IMAGES = 1024
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class ShardRef(BaseModel):
    """Where one shard's files are, what they hold, and the stamps that vouch for them."""

    images: FileStamp
    labels: FileStamp
    n: int
    image_size: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.images.sha256 + self.labels.sha256).encode()).hexdigest()

    def is_intact(self) -> bool:
        """Both files unchanged (size + mtime, else a full re-hash that must match)."""
        return self.images.verify() and self.labels.verify()


def _sibling(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the record vouches for it


def write_shard(stem: Path, images: np.ndarray, labels: np.ndarray) -> ShardRef:
    """Write one shard: images uint8 (n, S, S) or (n, S, S, 1), labels int8 (n,)."""
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"shard images must be uint8 (n, S, S, 1), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
    stem = Path(stem)
    record = _sibling(stem, ".json")
    record.unlink(missing_ok=True)  # no stale record may vouch for half-written files
    stamps = {}
    for part, array in (("images", images), ("labels", labels.astype(np.int8))):
        path = write_atomically(_sibling(stem, f".{part}.npy"), lambda tmp, a=array: _save_npy(tmp, a))
        stamps[part] = FileStamp.of(path)
    ref = ShardRef(**stamps, n=len(images), image_size=images.shape[1])
    write_atomically(record, lambda tmp: tmp.write_text(ref.model_dump_json(indent=2)))
    return ref


def existing_shard(stem: Path, *, n: int, image_size: int) -> ShardRef | None:
    """The shard at `stem` if its record vouches for files as they are now and it has the expected shape."""
    try:
        ref = ShardRef.model_validate(json.loads(_sibling(Path(stem), ".json").read_text()))
    except (OSError, ValueError):
        return None
    if ref.n != n or ref.image_size != image_size or not ref.is_intact():
        return None
    return ref


def read_labels(shards: Sequence[ShardRef]) -> np.ndarray:
    """All labels of the shards, in order (one byte per image)."""
    if not shards:
        return np.empty(0, dtype=np.int8)
    return np.concatenate([_checked_load(ref.labels.path, (ref.n,), np.int8) for ref in shards])


def _checked_load(path: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    array = np.load(path)
    if array.shape != shape or array.dtype != dtype:
        raise DataError(f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    return array


class ShardReader:
    """Random access to the images of a list of shards by global index, without mapping them whole.

    Each call reads only the requested rows (consecutive rows in one read), so the memory it uses is
    that of the batch it returns. Thread-safe: `os.pread` does not move a shared file offset.
    """

    def __init__(self, shards: Sequence[ShardRef]):
        self._handles: dict[int, int] = {}
        self._lock = threading.Lock()
        self.shards = list(shards)
        sizes = {ref.image_size for ref in self.shards}
        if len(sizes) > 1:
            raise DataError(f"shards of different image sizes {sorted(sizes)}")
        self.image_size = sizes.pop() if sizes else 0
        self.row_bytes = self.image_size * self.image_size
        self.starts = np.cumsum([0] + [ref.n for ref in self.shards])
        self._offsets = [self._data_offset(ref) for ref in self.shards]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _data_offset(self, ref: ShardRef) -> int:
        """Where the rows start in the `.npy` file, after checking its header against the record."""
        with open(ref.images.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in _HEADER_READERS:
                raise DataError(f"{ref.images.path}: unsupported .npy format version {version}")
            shape, fortran, dtype = _HEADER_READERS[version](handle)
            offset = handle.tell()
        expected = (ref.n, ref.image_size, ref.image_size, 1)
        if shape != expected or fortran or dtype != np.uint8:
            raise DataError(f"{ref.images.path} holds {dtype} {shape}, expected uint8 {expected}")
        return offset

    def _handle(self, shard: int) -> int:
        with self._lock:
            if shard not in self._handles:
                self._handles[shard] = os.open(self.shards[shard].images.path, os.O_RDONLY)
            return self._handles[shard]

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                os.close(handle)
            self._handles.clear()

    def __del__(self) -> None:
        self.close()

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Images uint8 (len(indices), S, S, 1) at the given global indices, in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        out = np.empty((len(indices), self.image_size, self.image_size, 1), dtype=np.uint8)
        flat = out.reshape(len(indices), -1)
        position = 0
        # Runs of consecutive indices within one shard are read at once (sequential reads: one per shard).
        breaks = np.flatnonzero((np.diff(wanted) != 1) | np.isin(wanted[1:], self.starts))
        for run in np.split(wanted, breaks + 1) if wanted.size else []:
            shard = int(np.searchsorted(self.starts, run[0], side="right") - 1)
            local = int(run[0] - self.starts[shard])
            size = len(run) * self.row_bytes
            data = os.pread(self._handle(shard), size, self._offsets[shard] + local * self.row_bytes)
            if len(data) != size:
                raise DataError(f"{self.shards[shard].images.path} is shorter than its header says")
            flat[order[position : position + len(run)]] = np.frombuffer(data, np.uint8).reshape(len(run), -1)
            position += len(run)
        return out


def shard_batches(
    shards: Sequence[ShardRef], *, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Batches of (uint8 images (b, S, S, 1), int8 labels (b,)) read from the shards.

    Shuffling permutes image indices (8 bytes per image), reshuffled every epoch in an order fixed by
    `seed`; batches are read in parallel and prefetched.
    """
    import tensorflow as tf

    reader = ShardReader(shards)
    labels = read_labels(shards)
    size = reader.image_size

    def load(batch_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return reader.gather(batch_indices), labels[batch_indices]

    def read(batch_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, batch_labels = tf.numpy_function(load, [batch_indices], (tf.uint8, tf.int8), stateful=False)
        images.set_shape((None, size, size, 1))
        batch_labels.set_shape((None,))
        return images, batch_labels

    indices = tf.data.Dataset.range(len(labels))
    if shuffle:
        indices = indices.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
