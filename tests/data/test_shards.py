"""Shards: written once, read back by batch in any order, and refused when damaged."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cxr.core import stamps
from cxr.core.errors import DataError
from cxr.data.filelists import write_file_list
from cxr.data.shards import ShardReader, existing_shard, read_labels, shard_batches, write_shard

SIZE = 8


def _images(start: int, count: int) -> np.ndarray:
    """Images whose every pixel is their global index (mod 256), so order can be checked."""
    values = np.arange(start, start + count, dtype=np.int64) % 256
    return np.broadcast_to(values[:, None, None], (count, SIZE, SIZE)).astype(np.uint8)


@pytest.fixture
def shards(tmp_path):
    """Three shards of 5, 7 and 3 images; labels alternate 0/1 by global index."""
    refs, start = [], 0
    for number, count in enumerate((5, 7, 3)):
        labels = (np.arange(start, start + count) % 2).astype(np.int8)
        refs.append(write_shard(tmp_path / f"shard-{number}", _images(start, count), labels))
        start += count
    return refs


def test_reader_returns_requested_rows_in_requested_order(shards):
    reader = ShardReader(shards)
    assert len(reader) == 15
    wanted = np.array([14, 0, 6, 5, 4, 12, 7, 7])  # across shard borders, repeated, unsorted
    images = reader.gather(wanted)
    assert images.shape == (len(wanted), SIZE, SIZE, 1) and images.dtype == np.uint8
    assert images[:, 0, 0, 0].tolist() == wanted.tolist()
    assert (images == images[:, :1, :1, :]).all()  # whole rows, not just their first byte
    np.testing.assert_array_equal(read_labels(shards), np.arange(15) % 2)
    with pytest.raises(IndexError):
        reader.gather(np.array([15]))


def test_batches_cover_every_image_once_and_reshuffle_by_seed(shards):
    def epochs(dataset, count):
        iterator_per_epoch = []
        for _ in range(count):
            images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
            iterator_per_epoch.append((np.concatenate(images)[:, 0, 0, 0], np.concatenate(labels)))
        return iterator_per_epoch

    plain = epochs(shard_batches(shards, batch_size=4, shuffle=False, seed=0), 1)[0]
    assert plain[0].tolist() == list(range(15))
    first, second = epochs(shard_batches(shards, batch_size=4, shuffle=True, seed=3), 2)
    again = epochs(shard_batches(shards, batch_size=4, shuffle=True, seed=3), 1)[0]
    assert sorted(first[0].tolist()) == list(range(15))
    assert first[0].tolist() != second[0].tolist()  # a new order every epoch
    assert first[0].tolist() == again[0].tolist()  # the same orders for the same seed
    np.testing.assert_array_equal(first[1], first[0] % 2)  # labels travel with their images


def test_record_reuses_an_intact_shard_and_refuses_a_damaged_one(shards):
    ref = shards[1]
    stem = ref.images.path.removesuffix(".images.npy")
    assert existing_shard(stem, n=7, image_size=SIZE) == ref
    assert existing_shard(stem, n=8, image_size=SIZE) is None  # another chunk's shape

    with open(ref.images.path, "r+b") as handle:  # one flipped byte in the pixels, same size
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\xff")
    assert not ref.is_intact()
    assert existing_shard(stem, n=7, image_size=SIZE) is None


def test_touched_shard_is_rehashed_and_truncated_one_refused_without_hashing(shards, monkeypatch):
    hashed: list[str] = []
    real_sha256_file = stamps.sha256_file
    monkeypatch.setattr(
        stamps, "sha256_file", lambda path: hashed.append(str(path)) or real_sha256_file(path)
    )
    ref = shards[0]

    assert ref.is_intact() and hashed == []  # size and mtime unchanged: no byte read
    status = os.stat(ref.images.path)
    os.utime(ref.images.path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert ref.is_intact() and hashed == [ref.images.path]  # touched: hashed in full, same bytes

    with open(ref.labels.path, "r+b") as handle:
        handle.truncate(os.stat(ref.labels.path).st_size - 1)
    assert not ref.is_intact() and ref.labels.path not in hashed  # the size alone gives it away


def test_reader_refuses_a_shard_whose_header_disagrees_with_its_record(shards):
    np.save(shards[2].images.path, _images(0, 4)[..., np.newaxis])  # 4 images where 3 are recorded
    with pytest.raises(DataError, match="expected uint8"):
        ShardReader(shards)


def test_file_list_round_trip_and_changed_list_refused(tmp_path):
    frame = pd.DataFrame({"path": [f"/data/{i}.png" for i in range(5)], "label": [0, 1, 0, 1, 1]})
    listed = write_file_list(frame, tmp_path / "chunk.parquet")
    assert listed.rows == 5 and len(listed.sha256) == 64
    pd.testing.assert_frame_equal(listed.read(), frame)
    assert listed.read(columns=["label"])["label"].tolist() == [0, 1, 0, 1, 1]

    frame.iloc[:4].to_parquet(listed.path, index=False)
    with pytest.raises(DataError, match="changed"):
        listed.read()
