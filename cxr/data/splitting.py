"""Splitting a manifest into train, valid and test.

Rules:
- Grouping: whole patients (or, without a patient id, whole files) go to one split, and so do all
  copies of identical content.
- Balance: per class (a group's majority label), groups are taken in the order of a stable hash of
  (seed, group id) and each goes to the split whose share of that class's images is furthest below
  its target (ties: test, valid, train). Every split then holds its fraction of each class to
  within a group's size, so class proportions match across splits.
- Stickiness: given the previous split of the same lineage, every group seen there keeps its split
  (matched by patient id or by identical content) and only new groups are placed, by the same rule,
  into the deficits. So adding files never moves an existing file, and an old model's training
  images never leak into a new test set. If new files join old groups that sat in different
  splits, the joined group goes to the least held-out of them (train, then valid, then test).
- Reviewed images (`cxr.data.provenance`: a person labelled them because the model was unsure) go to
  train or valid only, with their whole group: images chosen for their uncertainty would bias the test
  split, which stays as it was. (A reviewed image whose group was already in test stays there.)

The `split` stage keeps the lineage: which earlier split a new one starts from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from pydantic import Field

from cxr import CLASSES
from cxr.core.artifacts import WithArtifacts
from cxr.core.atomic_files import write_atomically
from cxr.core.caching import sha256_text
from cxr.core.errors import DataError
from cxr.core.stamps import FileStamp

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


SPLIT_NAME = "split.parquet"


OFFICIAL_TEST = "test"


class SplitResult(WithArtifacts):
    """Where the split manifest is, its content digest, images/patients per split, and the split it kept."""

    split_path: Path
    digest: str
    # The split file's bytes as written: a cached result is checked by one `stat`, not by reading the split.
    written: FileStamp
    counts: dict[str, dict[str, int]]
    patients: dict[str, int]
    previous_split: Path | None = None
    # Reviewed images in it (`cxr.data.provenance.reviewed_summary`): images, in_train/valid/test, ...
    reviewed: dict[str, int] = Field(default_factory=dict)

    def is_intact(self) -> bool:
        """Whether the split Parquet still holds the bytes it was written with (size and mtime, else a re-hash)."""
        return self.written.verify()


def unit_hash(seed: int, group_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for a group: the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}\0{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_ids(manifest: pd.DataFrame) -> pd.Series:
    """Per row, the id of the group that must stay in one split.

    A group is a patient (or a single file's content when the patient is unknown); groups that share
    identical content are merged, and the merged group takes its smallest member id.
    """
    base = manifest["patient_id"].where(manifest["patient_id"].notna(), "sha256:" + manifest["sha256"])
    parent = {key: key for key in base.unique()}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    pairs = pd.DataFrame({"sha256": manifest["sha256"], "key": base}).drop_duplicates()
    # Only content held by several groups links groups; grouping just those keeps this fast.
    shared = pairs[pairs.duplicated("sha256", keep=False)]
    for _, keys in shared.groupby("sha256")["key"]:
        roots = sorted({root(key) for key in keys})
        for other in roots[1:]:
            parent[other] = roots[0]
    return base.map(root)


def previous_assignments(manifest: pd.DataFrame, groups: pd.Series, previous: pd.DataFrame) -> dict[str, str]:
    """Per group of `manifest` seen in `previous` (by patient id or identical content), its old split.

    A group that meets old groups from several splits takes the least held-out one (train, valid,
    test), so no file moves from training into an evaluation split.
    """
    by_content = previous.drop_duplicates("sha256").set_index("sha256")["split"]
    with_patient = previous.dropna(subset=["patient_id"]).drop_duplicates("patient_id")
    by_patient = with_patient.set_index("patient_id")["split"]
    seen = pd.concat(
        [
            pd.DataFrame({"group": groups, "split": manifest["sha256"].map(by_content)}),
            pd.DataFrame({"group": groups, "split": manifest["patient_id"].map(by_patient)}),
        ],
        ignore_index=True,
    ).dropna()
    seen["rank"] = seen["split"].map(SPLITS.index)
    return seen.sort_values("rank").groupby("group")["split"].first().to_dict()


def assign_splits(
    manifest: pd.DataFrame,
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    keep_official_test: bool,
    previous: pd.DataFrame | None = None,
    reviewed: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """A copy of `manifest` with a `split` column ('train'|'valid'|'test'): grouped, stratified, sticky.

    `previous` (columns sha256, patient_id, split) is an earlier split of the same lineage: groups
    found in it keep their split and only new groups are placed. With `keep_official_test`, every
    new group with a file from the source's test folder is test, and the other groups are divided
    between train and valid (`test_fraction` is unused). New groups holding a `reviewed` sha256 are
    placed between train and valid only.
    """
    if valid_fraction <= 0 or test_fraction <= 0 or valid_fraction + test_fraction >= 1:
        raise ValueError("valid_fraction and test_fraction must be positive and sum to less than 1")
    groups = group_ids(manifest)
    placed = {} if previous is None else previous_assignments(manifest, groups, previous)
    if keep_official_test:
        in_official_test = (manifest["source_split"] == OFFICIAL_TEST).groupby(groups).any()
        if not in_official_test.any():
            raise DataError("keep_official_test is set but the data folder has no test/ folder")
        for group in in_official_test.index[in_official_test]:
            placed.setdefault(group, "test")
        targets = {"valid": valid_fraction, "train": 1.0 - valid_fraction}
    else:
        targets = {
            "test": test_fraction,
            "valid": valid_fraction,
            "train": 1.0 - valid_fraction - test_fraction,
        }
    labels_per_group = pd.crosstab(groups, manifest["label"]).reindex(columns=list(CLASSES), fill_value=0)
    held_reviewed = set(groups[manifest["sha256"].isin(list(reviewed))]) - set(placed)
    others = labels_per_group[~labels_per_group.index.isin(list(held_reviewed))]
    placed.update(_place_new_groups(others, placed, targets, seed))
    if held_reviewed:
        kept = sum(share for name, share in targets.items() if name != "test")
        without_test = {name: share / kept for name, share in targets.items() if name != "test"}
        placed.update(_place_new_groups(labels_per_group, placed, without_test, seed))
    return manifest.assign(split=groups.map(placed))


def _place_new_groups(
    labels_per_group: pd.DataFrame, placed: dict[str, str], targets: dict[str, float], seed: int
) -> dict[str, str]:
    """Greedy stratified placement of the groups not in `placed`, filling each class's deficits.

    `labels_per_group` has one row per group and one image count column per class; `targets` maps
    the splits to fill (in tie-break order) to their share of each class.
    """
    images = {name: dict.fromkeys(CLASSES, 0) for name in targets}
    per_group = labels_per_group.to_dict("index")
    for group, name in placed.items():
        if name in images:
            for label in CLASSES:
                images[name][label] += per_group[group][label]
    new = labels_per_group[~labels_per_group.index.isin(list(placed))]
    majority = new.idxmax(axis=1)  # ties: the first class in CLASSES order
    assigned: dict[str, str] = {}
    for label in CLASSES:
        ordered = sorted(majority.index[majority == label], key=lambda group: (unit_hash(seed, group), group))
        for group in ordered:
            counts = per_group[group]
            total = sum(per_class[label] for per_class in images.values()) + counts[label]
            # max() keeps the first of equal deficits, which gives the tie-break order of `targets`.
            name = max(targets, key=lambda split: targets[split] * total - images[split][label])
            for other in CLASSES:
                images[name][other] += counts[other]
            assigned[group] = name
    return assigned


def split_digest(split: pd.DataFrame) -> str:
    """SHA-256 over sorted (sha256, label, split): changes only when content, labels or splits do."""
    rows = sorted(
        f"{sha}\t{label}\t{name}"
        for sha, label, name in split[["sha256", "label", "split"]].itertuples(index=False)
    )
    return sha256_text("\n".join(rows))


def check_classes(manifest: pd.DataFrame, min_images_per_class: int) -> None:
    """Refuse a manifest that cannot train a two-class model."""
    unknown = sorted(set(manifest["label"]) - set(CLASSES))
    if unknown:
        raise DataError(f"unknown labels {unknown}; expected {list(CLASSES)}")
    counts = manifest["label"].value_counts()
    for label in CLASSES:
        found = int(counts.get(label, 0))
        if found < min_images_per_class:
            raise DataError(f"class '{label}' has {found} images; at least {min_images_per_class} are needed")


def summarise(split: pd.DataFrame) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Images per split and class, and patients (groups) per split."""
    counts = {name: dict.fromkeys(CLASSES, 0) for name in SPLITS}
    for (name, label), count in split.groupby(["split", "label"]).size().items():
        counts[name][label] = int(count)
    patients = group_ids(split).groupby(split["split"]).nunique()
    return counts, {name: int(patients.get(name, 0)) for name in SPLITS}


def split_manifest(
    manifest_path: Path,
    out_dir: Path,
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    keep_official_test: bool,
    min_images_per_class: int,
    previous_split: Path | None = None,
    reviewed: frozenset[str] = frozenset(),
) -> SplitResult:
    """Read the manifest, assign splits, check every split has every class, and write `split.parquet`.

    `previous_split` is an earlier `split.parquet` of the same lineage whose groups keep their split;
    `reviewed` the sha256 of reviewed images (train or valid only).
    """
    manifest = pd.read_parquet(manifest_path)
    check_classes(manifest, min_images_per_class)
    previous = None
    if previous_split is not None:
        if not Path(previous_split).is_file():
            raise DataError(f"previous split {previous_split} does not exist")
        previous = pd.read_parquet(previous_split, columns=["sha256", "patient_id", "split"])
    split = assign_splits(
        manifest,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        seed=seed,
        keep_official_test=keep_official_test,
        previous=previous,
        reviewed=reviewed,
    )
    counts, patients = summarise(split)
    for name, per_class in counts.items():
        missing = [label for label, count in per_class.items() if count == 0]
        if missing:
            raise DataError(
                f"split '{name}' would have no '{missing[0]}' images "
                f"({patients[name]} patients in it); add data or change the fractions"
            )
    split_path = out_dir / SPLIT_NAME
    write_atomically(split_path, lambda partial: split.to_parquet(partial, index=False))
    return SplitResult(
        split_path=split_path,
        written=FileStamp.of(split_path),
        digest=split_digest(split),
        counts=counts,
        patients=patients,
        previous_split=previous_split,
    )
