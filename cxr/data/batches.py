"""A split manifest decoded into shards: plan (one Parquet file list per shard) → build each → index.

Shards live in a folder named by (split digest, image size, shard size, decoding code), so a run
with the same data and size reuses them; each shard's own record (`cxr.data.shards`) lets a rebuilt plan
reuse a shard without decoding it again. Every step passes paths and digests, never file lists, so
what travels between tasks stays the same size whatever the number of images.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from cxr import CLASSES
from cxr.core.atomic_files import write_atomically
from cxr.core.caching import code_version, sha256_text
from cxr.core.errors import DataError
from cxr.core.import_closure import import_closure
from cxr.core.stamps import FileStamp
from cxr.data import imaging
from cxr.data.filelists import FileList, write_file_list
from cxr.data.shards import SHARD_IMAGES, ShardReader, ShardRef, existing_shard, read_labels, write_shard
from cxr.data.splitting import SPLITS, split_digest

PLAN_NAME = "chunks.json"
INDEX_NAME = "shards.json"


class ShardChunk(BaseModel):
    """One shard to build: its files (path, label rows, in order) and where it goes."""

    split: str
    number: int
    files: FileList
    stem: str
    image_size: int


class ShardPlan(BaseModel):
    """Every split's chunks, listed in `chunk_index` (a JSON file vouched for by its stamp)."""

    root: str
    digest: str
    image_size: int
    counts: dict[str, int]
    chunk_index: FileStamp

    def chunks(self) -> list[ShardChunk]:
        return [ShardChunk.model_validate(item) for item in _read_stamped(self.chunk_index)]

    def is_intact(self) -> bool:
        """Whether the chunk index and every chunk's file list are unchanged (one `stat` each)."""
        return self.chunk_index.verify() and all(chunk.files.verify() for chunk in self.chunks())


class BatchesResult(BaseModel):
    """A decoded split manifest: per split, shards listed in `index` (path + stamp, not inline)."""

    root: Path
    digest: str
    image_size: int
    counts: dict[str, int]
    index: FileStamp

    def shards(self, split: str) -> list[ShardRef]:
        """The split's shards, in order."""
        listed = _read_stamped(self.index)
        if split not in listed:
            raise DataError(f"no split '{split}' in {self.root}; have {sorted(listed)}")
        return [ShardRef.model_validate(item) for item in listed[split]]

    def is_intact(self) -> bool:
        """Whether the index and every shard still hold what they were written with."""
        if not self.index.verify():
            return False
        return all(ref.is_intact() for split in SPLITS for ref in self.shards(split))


def _read_stamped(stamp: FileStamp) -> list | dict:
    if not stamp.verify():
        raise DataError(f"{stamp.path} is missing or changed since it was written")
    return json.loads(Path(stamp.path).read_text())


def _write_stamped(path: Path, value: list | dict) -> FileStamp:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1)))
    return FileStamp.of(path)


def batches_key(digest: str, image_size: int, shard_images: int) -> str:
    """Folder name: what decides the shards' content (data, size, shard size, the source of this module's
    import closure, which holds the decoding code)."""
    code = code_version(import_closure(__name__))
    return sha256_text(f"{digest}:{image_size}:{shard_images}:{code}")[:16]


def plan_shards(
    split_path: Path, out_root: Path, *, image_size: int, shard_images: int = SHARD_IMAGES
) -> ShardPlan:
    """Cut each split (rows in content-hash order) into chunks of `shard_images` and list their files."""
    split = pd.read_parquet(split_path, columns=["path", "label", "sha256", "split"])
    unknown = sorted(set(split["label"]) - set(CLASSES))
    if unknown:
        raise DataError(f"unknown labels {unknown} in {split_path}; expected {list(CLASSES)}")
    digest = split_digest(split)
    root = Path(out_root) / batches_key(digest, image_size, shard_images)
    chunks, counts = [], {}
    for name in SPLITS:
        rows = split[split["split"] == name].sort_values("sha256", kind="stable")[["path", "label"]]
        counts[name] = len(rows)
        for number, start in enumerate(range(0, len(rows), shard_images)):
            stem = root / name / f"shard-{number:05d}"
            files = write_file_list(rows.iloc[start : start + shard_images], Path(f"{stem}.files.parquet"))
            chunk = ShardChunk(split=name, number=number, files=files, stem=str(stem), image_size=image_size)
            chunks.append(chunk.model_dump(mode="json"))
    index = _write_stamped(root / PLAN_NAME, chunks)
    return ShardPlan(root=str(root), digest=digest, image_size=image_size, counts=counts, chunk_index=index)


def decode_paths(paths: list[str], size: int) -> np.ndarray:
    """Images as uint8 (len(paths), size, size)."""
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = imaging.load_greyscale(Path(path), size)
    return images


def build_shard(chunk: ShardChunk) -> ShardRef:
    """Decode the chunk's files into its shard, unless an intact shard of that chunk is already there."""
    found = existing_shard(Path(chunk.stem), n=chunk.files.rows, image_size=chunk.image_size)
    if found is not None:
        return found
    rows = chunk.files.read()
    images = decode_paths(rows["path"].tolist(), chunk.image_size)
    labels = rows["label"].map(CLASSES.index).to_numpy(dtype=np.int8)
    return write_shard(Path(chunk.stem), images, labels)


def assemble_shards(plan: ShardPlan, shards: list[ShardRef]) -> BatchesResult:
    """Index the built shards by split (in the plan's order) after checking they add up."""
    chunks = plan.chunks()
    if len(chunks) != len(shards):
        raise ValueError(f"{len(chunks)} chunks planned but {len(shards)} shards built")
    listed: dict[str, list] = {name: [] for name in SPLITS}
    for chunk, ref in zip(chunks, shards, strict=True):
        if ref.n != chunk.files.rows or ref.image_size != plan.image_size:
            raise ValueError(f"shard {ref.images.path} holds {ref.n} images, its chunk {chunk.files.rows}")
        if not ref.is_intact():
            raise DataError(f"shard {ref.images.path} changed since it was built")
        listed[chunk.split].append(ref.model_dump(mode="json"))
    index = _write_stamped(Path(plan.root) / INDEX_NAME, listed)
    return BatchesResult(
        root=Path(plan.root), digest=plan.digest, image_size=plan.image_size, counts=plan.counts, index=index
    )


def materialise_batches(
    split_path: Path, out_root: Path, *, image_size: int, shard_images: int = SHARD_IMAGES
) -> BatchesResult:
    """Plan, build (a thread per core: decoding releases the GIL) and index, in this process.

    The flow runs the same steps as tasks, the builds mapped on its task runner.
    """
    plan = plan_shards(split_path, out_root, image_size=image_size, shard_images=shard_images)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return assemble_shards(plan, list(pool.map(build_shard, plan.chunks())))


def load_split(batches: BatchesResult, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory: (images uint8 (N,S,S,1), labels int8 (N,)). For small splits only;
    training and evaluation stream batches from the shards instead."""
    shards = batches.shards(name)
    reader = ShardReader(shards)
    try:
        return reader.gather(np.arange(len(reader))), read_labels(shards)
    finally:
        reader.close()


def write_batches(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    digest: str = "",
    shard_images: int = SHARD_IMAGES,
) -> BatchesResult:
    """Shards and index from splits already in memory (images uint8 (N,S,S[,1]), labels int8 (N,))."""
    sizes = {images.shape[1] for images, _ in splits.values()}
    if len(sizes) != 1:
        raise ValueError(f"splits of different image sizes {sorted(sizes)}")
    listed: dict[str, list] = {name: [] for name in SPLITS}
    for name, (images, labels) in splits.items():
        for number, start in enumerate(range(0, len(labels), shard_images)):
            part = slice(start, start + shard_images)
            ref = write_shard(Path(root) / name / f"shard-{number:05d}", images[part], labels[part])
            listed[name].append(ref.model_dump(mode="json"))
    return BatchesResult(
        root=Path(root),
        digest=digest,
        image_size=sizes.pop(),
        counts={name: len(splits[name][1]) if name in splits else 0 for name in SPLITS},
        index=_write_stamped(Path(root) / INDEX_NAME, listed),
    )
