"""The domain fit reads a bounded number of images, whatever the size of the splits."""

from __future__ import annotations

import numpy as np

from cxr.config.params import DomainParams
from cxr.data.batches import write_batches
from cxr.data.shards import ShardReader
from cxr.evaluation import domain_fit
from cxr.evaluation.domain_fit import guard_model, sample_rows
from tests.helpers.domain_cases import blob_scenes
from tests.helpers.toy_models import SIZE, write_blob_model


def test_a_split_larger_than_the_cap_is_sampled_in_order_and_by_seed():
    assert sample_rows(40, 40, seed=0) is None  # no larger than the cap: read whole
    rows = sample_rows(1000, 50, seed=3)
    assert len(rows) == len(set(rows)) == 50 and np.all(np.diff(rows) > 0) and rows.max() < 1000
    assert np.array_equal(rows, sample_rows(1000, 50, seed=3))
    assert not np.array_equal(rows, sample_rows(1000, 50, seed=4))


def test_the_fit_reads_at_most_four_times_fit_images_in_chunks(tmp_path, monkeypatch):
    scenes = blob_scenes(360, SIZE, seed=1).astype(np.uint8)[..., None]
    labels = (np.arange(360) % 2).astype(np.int8)
    splits = {"train": (scenes[:200], labels[:200]), "valid": (scenes[200:280], labels[200:280])}
    splits["test"] = (scenes[280:], labels[280:])
    batches = write_batches(tmp_path / "batches", splits, shard_images=64)
    reads: list[int] = []
    gather = ShardReader.gather
    monkeypatch.setattr(
        ShardReader, "gather", lambda self, rows: reads.append(len(rows)) or gather(self, rows)
    )
    monkeypatch.setattr(domain_fit, "READ_CHUNK", 16)

    params = DomainParams(fit_images=30, quantile=0.9)
    model = write_blob_model(tmp_path / "model") / "model.keras"
    guard = guard_model(model, batches, params, seed=0, min_image_side=64, out_dir=tmp_path / "guarded")

    assert sum(reads) == 4 * params.fit_images  # fit, held-out training, validation and test samples
    assert max(reads) <= 16
    assert guard.summary["fit_images"] == 30 and guard.summary["calibration_images"] == 60
    assert (tmp_path / "guarded" / "model.json").exists()
