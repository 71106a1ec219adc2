"""The scale measure's own pieces: distinct synthetic folders made fast, and the per-image time spread."""

from __future__ import annotations

import hashlib

from bench.scale import time_per_image_spread, write_scaled_dataset
from cxr.layouts import label_for, parse_patient_id


def test_scaled_folder_holds_distinct_labelled_images_one_patient_each(tmp_path):
    out = tmp_path / "images" / "chest_xray"
    write_scaled_dataset(out, 30, seed=4, base_images=8)  # 8 drawn images, each copied shifted
    files = sorted(out.rglob("*.jpeg"))
    assert len(files) == 30
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in files}) == 30  # ingest keeps all
    relative = [str(path.relative_to(out)) for path in files]
    assert {label_for(path, "kaggle").label for path in relative} == {"normal", "pneumonia"}
    assert len({parse_patient_id(path.name) for path in files}) == 30
    assert not list(tmp_path.rglob("*-base*"))  # the drawn images are not left behind


def test_spread_is_the_largest_change_of_seconds_per_image_from_the_smallest_folder():
    runs = [
        {"ingest_img_s": 100.0, "shards_img_s": 50.0, "train_img_s": 10.0},
        {"ingest_img_s": 125.0, "shards_img_s": 50.0, "train_img_s": 10.0},  # 0.8 x the time per image
        {"ingest_img_s": 100.0, "shards_img_s": 40.0, "train_img_s": 11.0},  # 1.25 x
    ]
    assert time_per_image_spread(runs) == 0.25
    assert time_per_image_spread(runs[:1]) == 0.0
