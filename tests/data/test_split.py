"""Splitting: patient-grouped, duplicate-safe, stratified, deterministic and stable under additions."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pandas as pd
import pytest

from cxr import CLASSES, NORMAL, PNEUMONIA
from cxr.config.params import SplitParams
from cxr.core.errors import DataError
from cxr.data.splitting import SPLITS, assign_splits, split_manifest

PARAMS = {"valid_fraction": 0.15, "test_fraction": 0.15, "seed": 42, "keep_official_test": False}
KAGGLE_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)[_-]")


def _manifest(n_patients: int, *, seed: int = 0, prefix: str = "p") -> pd.DataFrame:
    """Patients with 1-3 images (pneumonia ones sometimes more), about 27 % normal, unique content."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(n_patients):
        label = NORMAL if rng.random() < 0.25 else PNEUMONIA
        count = int(rng.choice([1, 2, 3])) if label == PNEUMONIA else int(rng.choice([1, 1, 2]))
        for index in range(count):
            name = f"{prefix}{number}-{index}"
            rows.append(
                {
                    "path": f"/data/{name}.jpeg",
                    "label": label,
                    "patient_id": f"{prefix}{number}",
                    "sha256": hashlib.sha256(name.encode()).hexdigest(),
                    "source_split": "train",
                }
            )
    return pd.DataFrame(rows)


def _max_share_deviation(split: pd.DataFrame) -> float:
    overall = (split["label"] == NORMAL).mean()
    return max(abs((part["label"] == NORMAL).mean() - overall) for _, part in split.groupby("split"))


def _assert_grouped(split: pd.DataFrame, group_column: str = "patient_id") -> None:
    assert split.groupby(group_column)["split"].nunique().max() == 1
    assert split.groupby("sha256")["split"].nunique().max() == 1


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    frame = _manifest(1600)
    assert 2800 <= len(frame) <= 3300
    return frame


@pytest.mark.parametrize("seed", range(20))
def test_grouped_stratified_and_sized_for_every_seed(manifest, seed):
    split = assign_splits(manifest, **{**PARAMS, "seed": seed})
    _assert_grouped(split)
    shares = split["split"].value_counts(normalize=True)
    assert abs(shares["valid"] - 0.15) < 0.01 and abs(shares["test"] - 0.15) < 0.01
    assert _max_share_deviation(split) <= 0.02


def test_deterministic_and_seed_dependent(manifest):
    first = assign_splits(manifest, **PARAMS)["split"]
    again = assign_splits(manifest.sample(frac=1.0, random_state=1), **PARAMS)["split"].sort_index()
    other_seed = assign_splits(manifest, **{**PARAMS, "seed": 7})["split"]
    assert first.equals(again)
    assert (first != other_seed).mean() > 0.2


def _grown(manifest: pd.DataFrame) -> pd.DataFrame:
    """`manifest` plus new patients and new images of existing patients: at least 5 % more rows."""
    new_patients = _manifest(75, seed=9, prefix="new")
    extra_images = manifest.head(20).assign(
        path=lambda f: f["path"] + ".2",
        sha256=lambda f: f["sha256"].map(lambda s: hashlib.sha256(s.encode()).hexdigest()),
    )
    grown = pd.concat([manifest, new_patients, extra_images], ignore_index=True)
    assert len(grown) >= 1.05 * len(manifest)
    return grown


@pytest.mark.parametrize("seed", [0, 42])
def test_adding_files_moves_no_existing_file_and_stays_balanced(manifest, seed):
    params = {**PARAMS, "seed": seed}
    before = assign_splits(manifest, **params)
    grown = _grown(manifest)
    after = assign_splits(grown, **params, previous=before)
    assert after["split"].iloc[: len(manifest)].equals(before["split"])
    # New images of known patients follow their patient; new patients fill every split.
    added = after.iloc[len(manifest) :]
    old_patient_rows = added[added["patient_id"].isin(before["patient_id"])]
    expected = old_patient_rows["patient_id"].map(before.groupby("patient_id")["split"].first())
    assert len(old_patient_rows) == 20 and old_patient_rows["split"].equals(expected)
    assert set(after.loc[after["patient_id"].str.startswith("new"), "split"]) == set(SPLITS)
    _assert_grouped(after)
    assert _max_share_deviation(after) <= 0.02
    # Without the previous split the greedy placement is free to reshuffle: stickiness is the point.
    assert not assign_splits(grown, **params)["split"].iloc[: len(manifest)].equals(before["split"])


def test_reviewed_images_go_to_train_or_valid_and_leave_the_test_split_as_it_was(manifest):
    before = assign_splits(manifest, **PARAMS)
    reviewed = _manifest(200, seed=5, prefix="reviewed").assign(patient_id=None)
    grown = pd.concat([manifest, reviewed], ignore_index=True)
    after = assign_splits(grown, **PARAMS, previous=before, reviewed=frozenset(reviewed["sha256"]))
    placed = after.iloc[len(manifest) :]["split"]
    assert set(placed) == {"train", "valid"}  # both used, in about their proportions
    assert 0.1 <= (placed == "valid").mean() <= 0.3
    assert after["split"].iloc[: len(manifest)].equals(before["split"])
    # Unreviewed, the same new images would fill the test split too.
    assert "test" in set(assign_splits(grown, **PARAMS, previous=before).iloc[len(manifest) :]["split"])


def test_new_file_with_old_content_follows_the_old_file(manifest):
    before = assign_splits(manifest, **PARAMS)
    test_row = before.index[before["split"] == "test"][0]
    copy = (
        before.loc[[test_row]].drop(columns="split").assign(patient_id="someone-new", path="/data/copy.jpeg")
    )
    after = assign_splits(pd.concat([manifest, copy], ignore_index=True), **PARAMS, previous=before)
    assert after["split"].iloc[-1] == "test"
    assert after["split"].iloc[: len(manifest)].equals(before["split"])


def test_new_file_joining_old_groups_of_different_splits_goes_to_the_least_held_out(manifest):
    before = assign_splits(manifest, **PARAMS)
    in_test = before.index[before["split"] == "test"][0]
    in_train = before.index[before["split"] == "train"][0]
    # A new image of the test patient whose bytes equal the train patient's image.
    bridge = (
        before.loc[[in_test]]
        .drop(columns="split")
        .assign(path="/data/bridge.jpeg", sha256=before.loc[in_train, "sha256"])
    )
    after = assign_splits(pd.concat([manifest, bridge], ignore_index=True), **PARAMS, previous=before)
    linked = after["patient_id"].isin(before.loc[[in_test, in_train], "patient_id"])
    assert set(after.loc[linked, "split"]) == {"train"}
    _assert_grouped(after)


def test_identical_content_shares_a_split_across_patients():
    frame = _manifest(400)
    # Give 30 files from other patients the content of row 0 (and no patient id for a few).
    copies = frame.sample(30, random_state=0).index
    frame.loc[copies, "sha256"] = frame.loc[0, "sha256"]
    frame.loc[copies[:5], "patient_id"] = None
    split = assign_splits(frame, **PARAMS)
    assert split.loc[[0, *copies], "split"].nunique() == 1
    linked = split["patient_id"].isin(split.loc[copies, "patient_id"])
    assert split.loc[linked, "split"].nunique() == 1


def test_files_without_patient_are_their_own_group():
    frame = _manifest(600).assign(patient_id=None)
    split = assign_splits(frame, **PARAMS)
    assert split["split"].value_counts(normalize=True)["train"] == pytest.approx(0.7, abs=0.05)


def test_keep_official_test(manifest):
    frame = manifest.copy()
    official = frame["patient_id"].isin(frame["patient_id"].drop_duplicates().sample(200, random_state=2))
    frame.loc[official, "source_split"] = "test"
    # One patient with an image in the official test and others in train goes wholly to test.
    straddling = frame.loc[~official, "patient_id"].value_counts().index[0]
    frame.loc[frame.index[frame["patient_id"] == straddling][0], "source_split"] = "test"
    split = assign_splits(frame, **{**PARAMS, "keep_official_test": True})
    assert (split.loc[frame["source_split"] == "test", "split"] == "test").all()
    assert (split.loc[frame["patient_id"] == straddling, "split"] == "test").all()
    rest = split[split["split"] != "test"]
    assert set(rest["patient_id"]).isdisjoint(set(frame.loc[official, "patient_id"]))
    assert (rest["split"] == "valid").mean() == pytest.approx(0.15, abs=0.03)
    _assert_grouped(split)


def test_keep_official_test_without_test_folder_is_refused(manifest):
    with pytest.raises(DataError, match="no test/ folder"):
        assign_splits(manifest, **{**PARAMS, "keep_official_test": True})


def test_split_manifest_writes_parquet_and_summary(tmp_path, manifest):
    manifest.to_parquet(tmp_path / "manifest.parquet")
    result = split_manifest(tmp_path / "manifest.parquet", tmp_path / "out", min_images_per_class=2, **PARAMS)
    written = pd.read_parquet(result.split_path)
    assert len(written) == len(manifest) and set(written["split"]) == set(SPLITS)
    assert sum(sum(per_class.values()) for per_class in result.counts.values()) == len(manifest)
    assert result.patients["train"] == written.loc[written["split"] == "train", "patient_id"].nunique()
    assert not [name for name in os.listdir(tmp_path / "out") if name.endswith(".tmp")]
    again = split_manifest(
        tmp_path / "manifest.parquet", tmp_path / "again", min_images_per_class=2, **PARAMS
    )
    assert again.digest == result.digest
    other = split_manifest(
        tmp_path / "manifest.parquet", tmp_path / "other", min_images_per_class=2, **{**PARAMS, "seed": 1}
    )
    assert other.digest != result.digest


def test_a_split_result_is_checked_by_its_stamp_not_by_reading_the_split(tmp_path, manifest, monkeypatch):
    """A cached rerun checks the split with one `stat` (reading it back cost 0.4 s at 16,000 images and grows
    with the archive); a rewrite with other bytes or a deleted file still fails the check."""
    manifest.to_parquet(tmp_path / "manifest.parquet")
    result = split_manifest(tmp_path / "manifest.parquet", tmp_path / "out", min_images_per_class=2, **PARAMS)

    def unread(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the check read the split")

    with monkeypatch.context() as patched:
        patched.setattr(pd, "read_parquet", unread)
        assert result.is_intact()
    other = pd.read_parquet(result.split_path).assign(split="train")
    other.to_parquet(result.split_path, index=False)
    assert not result.is_intact()
    result.split_path.unlink()
    assert not result.is_intact()


@pytest.mark.parametrize(
    ("labels", "minimum", "message"),
    [
        ([PNEUMONIA] * 40, 2, "class 'normal' has 0 images"),
        ([PNEUMONIA] * 40 + [NORMAL] * 3, 5, "class 'normal' has 3 images; at least 5"),
        ([PNEUMONIA] * 40 + [NORMAL] * 2, 2, "would have no 'normal' images"),
        ([PNEUMONIA] * 40 + ["cat"] * 2, 2, "unknown labels"),
    ],
)
def test_unusable_manifests_raise_data_error(tmp_path, labels, minimum, message):
    frame = pd.DataFrame(
        {
            "path": [f"/d/{i}.jpeg" for i in range(len(labels))],
            "label": labels,
            "patient_id": [f"p{i}" for i in range(len(labels))],
            "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(labels))],
            "source_split": "train",
        }
    )
    frame.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(DataError, match=re.escape(message)):
        split_manifest(
            tmp_path / "manifest.parquet", tmp_path / "out", min_images_per_class=minimum, **PARAMS
        )


def test_split_task_keeps_its_lineage_sticky_and_caches(prefect_harness, tmp_path, manifest):
    from prefect import flow

    from tasks.split import latest_split, latest_split_index, split

    seed = 1234  # a lineage of its own in the session's state folder
    manifest.to_parquet(tmp_path / "first.parquet")
    _grown(manifest).to_parquet(tmp_path / "grown.parquet")

    @flow
    def run_split(name: str, digest: str):
        return split(str(tmp_path / name), digest, SplitParams(seed=seed))

    first = run_split("first.parquet", "digest-1")
    index = latest_split_index(SplitParams(seed=seed))
    assert first.previous_split is None and first.patients["test"] > 0
    assert latest_split(index).split_path == first.split_path

    grown = run_split("grown.parquet", "digest-2")
    assert grown.previous_split == first.split_path and latest_split(index).split_path == grown.split_path
    before, after = pd.read_parquet(first.split_path), pd.read_parquet(grown.split_path)
    assert after["split"].iloc[: len(before)].equals(before["split"])

    # Re-running on the same manifest reproduces the same split from the cache: nothing is rewritten.
    written = grown.split_path.stat().st_mtime_ns
    again = run_split("grown.parquet", "digest-2")
    assert again == grown
    assert again.split_path.stat().st_mtime_ns == written


@pytest.mark.real_data
def test_kaggle_train_split_by_file_names(shared_data, capsys):
    rows = []
    for label in CLASSES:
        for path in sorted((shared_data / "kaggle_train_224" / label.upper()).iterdir()):
            patient = KAGGLE_PATIENT.match(path.name)
            rows.append(
                {
                    "path": str(path),
                    "label": label,
                    "patient_id": patient.group(1) if patient else None,
                    "sha256": hashlib.sha256(path.name.encode()).hexdigest(),  # names stand in for content
                    "source_split": "train",
                }
            )
    frame = pd.DataFrame(rows)
    assert frame["patient_id"].notna().all() and len(frame) == 5216
    split = assign_splits(frame, **PARAMS)
    _assert_grouped(split)
    deviation = _max_share_deviation(split)
    for seed in range(5):
        assert _max_share_deviation(assign_splits(frame, **{**PARAMS, "seed": seed})) <= 0.02
    with capsys.disabled():
        summary = split.groupby(["split", "label"]).size().unstack()
        summary["patients"] = split.groupby("split")["patient_id"].nunique()
        print(f"\nKaggle train split (seed 42), max normal-share deviation {deviation:.4f}:\n{summary}")
    assert deviation <= 0.02
