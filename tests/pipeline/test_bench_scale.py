"""The scale measure's own pieces: distinct synthetic folders made fast, and the per-image time spread."""

from __future__ import annotations

import hashlib
import json

import pytest

from bench.scale import cpu_per_image_spread, main, time_per_image_spread, write_scaled_dataset
from cxr.data.layouts import label_for, parse_patient_id


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
    cpu = [{"ingest_cpu_ms_per_image": ms} for ms in (2.0, 2.2, 1.5)]
    assert cpu_per_image_spread(cpu) == 0.25
    assert cpu_per_image_spread(cpu[:1]) == 0.0


def test_ingest_alone_reports_its_cpu_cost_per_image_for_each_folder_size(tmp_path, capsys):
    assert main(["--ingest-only", "24", "12", "--repeats", "2", "--work", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [run["images"] for run in result["runs"]] == [12, 24]
    for run in result["runs"]:
        assert run["ingest_alone_img_s"] > 0 and run["ingest_cpu_ms_per_image"] > 0
    assert result["ingest_cpu_spread"] == cpu_per_image_spread(result["runs"]) >= 0
    assert (tmp_path / "out" / "manifest.parquet").exists()  # the larger folder's manifest, written last


@pytest.mark.slow
def test_memory_mode_reports_each_tasks_peak_and_the_cached_rerun_per_folder_size(tmp_path, capsys):
    """`--memory` at a tiny size: two folder sizes, each trained in its own state folder and rerun cached."""
    assert main(["--memory", "48", "40", "--image-size", "32", "--work", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [run["images"] for run in result["runs"]] == [40, 48]
    for run in result["runs"]:
        peaks = run["peak_rss_mib_by_task"]
        assert {"ingest-check", "batches-shard", "train", "domain", "evaluate", "register"} <= set(peaks)
        assert 100 < max(peaks.values()) <= run["peak_rss_mib"]  # TensorFlow loaded; no task above the run
        assert run["cached_rerun_s"] > 0
    smallest, largest = result["runs"]
    assert result["rss_growth"] == round(largest["peak_rss_mib"] / smallest["peak_rss_mib"], 3)
    assert result["task_rss_growth"]["domain"] > 0
    assert result["cached_rerun_max_s"] == max(run["cached_rerun_s"] for run in result["runs"])
    for count in (40, 48):  # each state folder's Prefect server was stopped again
        assert not (tmp_path / f"home-{count}" / "prefect" / "server.pid").exists()
