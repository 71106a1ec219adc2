"""Sharded batches: planned as file lists, built per chunk, indexed; reused by content, rebuilt when damaged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr import CLASSES, NORMAL, PNEUMONIA
from cxr.data import batches as batches_module
from cxr.data.batches import build_shard, load_split, materialise_batches, plan_shards

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


def write_split(tmp_path, n: int = 24):
    """A split manifest of `n` files: 2/3 train, 1/6 valid, 1/6 test; labels alternate by index."""
    labels = [PNEUMONIA, NORMAL] * (n // 2)
    splits = ["train"] * (n * 2 // 3) + ["valid"] * (n // 6) + ["test"] * (n - n * 2 // 3 - n // 6)
    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / f"img-{i}.jpeg") for i in range(n)],
            "label": labels,
            "patient_id": [f"p{i}" for i in range(n)],
            "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
            "split": splits,
        }
    )
    path = tmp_path / f"split-{n}.parquet"
    frame.to_parquet(path)
    return path, frame


def test_shards_hold_each_split_in_content_hash_order_with_its_labels(tmp_path, decode_calls):
    split_path, frame = write_split(tmp_path)
    result = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE, shard_images=5)
    assert result.counts == {"train": 16, "valid": 4, "test": 4}
    assert [ref.n for ref in result.shards("train")] == [5, 5, 5, 1]
    images, labels = load_split(result, "train")
    assert images.dtype == np.uint8 and images.shape == (16, SIZE, SIZE, 1) and labels.dtype == np.int8
    index = images[:, 0, 0, 0].astype(int)
    train = frame[frame["split"] == "train"]
    assert index.tolist() == train.sort_values("sha256").index.tolist()  # sha256 order, across shards
    assert [CLASSES[label] for label in labels] == [frame.loc[i, "label"] for i in index]
    assert result.is_intact() and len(decode_calls) == 24


def test_results_stay_the_same_size_whatever_the_number_of_images(tmp_path, decode_calls):
    small = materialise_batches(write_split(tmp_path, 24)[0], tmp_path / "b", image_size=SIZE, shard_images=8)
    large = materialise_batches(
        write_split(tmp_path, 240)[0], tmp_path / "b", image_size=SIZE, shard_images=8
    )
    assert len(large.shards("train")) == 10 * len(small.shards("train"))
    # Counts grow by a digit or two; the result names the index, it does not hold it.
    assert abs(len(large.model_dump_json()) - len(small.model_dump_json())) <= 6
    plan = plan_shards(write_split(tmp_path, 240)[0], tmp_path / "b", image_size=SIZE, shard_images=8)
    assert max(len(chunk.model_dump_json()) for chunk in plan.chunks()) < 1000


def test_rerun_reuses_shards_and_another_size_gets_its_own_folder(tmp_path, decode_calls):
    split_path, _ = write_split(tmp_path)
    first = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE, shard_images=5)
    again = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE, shard_images=5)
    assert len(decode_calls) == 24  # every shard's record vouched for it: nothing decoded twice
    assert again.shards("valid") == first.shards("valid")
    bigger = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE * 2, shard_images=5)
    assert bigger.root != first.root and len(decode_calls) == 48


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_record"])
def test_damaged_shard_is_refused_and_rebuilt(tmp_path, decode_calls, damage):
    split_path, _ = write_split(tmp_path)
    first = materialise_batches(split_path, tmp_path / "batches", image_size=SIZE, shard_images=5)
    ref = first.shards("train")[1]
    target = Path(ref.images.path)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
        # A rewrite moves the mtime (here by a second: timestamps can be coarser than this test is fast),
        # so the full hash runs, and disagrees.
        os.utime(target, ns=(ref.images.mtime_ns, ref.images.mtime_ns + 10**9))
    else:
        target.with_name(target.name.replace(".images.npy", ".json")).unlink()
    assert first.is_intact() == (damage == "drop_record")  # the record is for reuse, the index vouches

    decode_calls.clear()
    plan = plan_shards(split_path, tmp_path / "batches", image_size=SIZE, shard_images=5)
    chunk = next(c for c in plan.chunks() if c.split == "train" and c.number == 1)
    rebuilt = build_shard(chunk)
    assert len(decode_calls) == 5  # only the damaged shard
    np.testing.assert_array_equal(np.load(rebuilt.images.path), np.load(ref.images.path))
    assert rebuilt.images.sha256 == ref.images.sha256
