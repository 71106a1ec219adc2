"""A split's images at a model's own input size, decoded as serving decodes them.

Shards hold each split decoded once at the run's image size. A model of that size reads them as they are; a
model of another size (the champion in the gate, a model scored on a folder) gets the split's files decoded
again at its size by the same decoder serving uses (`cxr.data.imaging`: Pillow, bilinear), so it is scored on
the pixels it would see in production, not on a resize of another size's pixels. Shards written from memory
(no files behind them) are resized as serving resizes an array sent to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.batches import PLAN_NAME, BatchesResult, decode_paths
from cxr.data.filelists import FileList
from cxr.data.shards import ShardReader

# Images held in memory at once.
READ_CHUNK = 512


def split_paths(batches: BatchesResult, split: str) -> list[str] | None:
    """The files behind `split`'s shards, in shard order; None for shards written from memory."""
    plan = Path(batches.root) / PLAN_NAME
    if not plan.is_file():
        return None
    chunks = [chunk for chunk in json.loads(plan.read_text()) if chunk["split"] == split]
    files = [FileList.model_validate(chunk["files"]) for chunk in chunks]
    return [path for listed in files for path in listed.read(["path"])["path"].tolist()]


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, size, size) of uint8 (N, S, S[, 1]) grey images, each resized by Pillow (bilinear), as serving
    resizes an array."""
    grey = np.asarray(images, dtype=np.uint8).reshape(len(images), *np.shape(images)[1:3])
    out = np.empty((len(grey), size, size), dtype=np.uint8)
    for index, image in enumerate(grey):
        out[index] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return out


def split_image_chunks(
    batches: BatchesResult, split: str, size: int, chunk: int = READ_CHUNK
) -> Iterator[np.ndarray]:
    """`split`'s images as uint8 (n, size, size, 1) chunks, in shard order (that of `read_labels`)."""
    if size == batches.image_size:
        reader = ShardReader(batches.shards(split))
        try:
            for start in range(0, len(reader), chunk):
                yield reader.gather(np.arange(start, min(start + chunk, len(reader))))
        finally:
            reader.close()
        return
    paths = split_paths(batches, split)
    if paths is None:
        for images in split_image_chunks(batches, split, batches.image_size, chunk):
            yield resized(images, size)[..., None]
        return
    for start in range(0, len(paths), chunk):
        yield decode_paths(paths[start : start + chunk], size)[..., None]
