"""The synthetic dataset: deterministic, Kaggle-shaped, and with a real but modest class signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.demo_data import write_demo_dataset

PNEUMONIA_NAME = re.compile(r"^person(\d+)_(bacteria|virus)_\d+\.jpeg$")
NORMAL_NAME = re.compile(r"^IM-(\d{4})-\d{4}\.jpeg$")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path):
    counts = write_demo_dataset(tmp_path / "a", n=30, size=32, seed=3)
    write_demo_dataset(tmp_path / "b", n=30, size=32, seed=3)
    write_demo_dataset(tmp_path / "c", n=30, size=32, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    assert sum(sum(per_class.values()) for per_class in counts.values()) == 30


def test_layout_names_and_patients(tiny_dataset):
    patients_by_split: dict[str, set[str]] = {}
    counted = {}
    for split in ("train", "test"):
        for folder, pattern in (("NORMAL", NORMAL_NAME), ("PNEUMONIA", PNEUMONIA_NAME)):
            names = [path.name for path in (tiny_dataset / split / folder).iterdir()]
            assert names, f"{split}/{folder} is empty"
            assert all(pattern.match(name) for name in names), names
            patients = [f"{folder}{pattern.match(name).group(1)}" for name in names]
            assert max(patients.count(p) for p in patients) <= 3
            patients_by_split.setdefault(split, set()).update(patients)
            counted[split, folder] = len(names)
    assert not patients_by_split["train"] & patients_by_split["test"]
    total = sum(counted.values())
    assert total == 80
    assert 0.08 <= (counted["test", "NORMAL"] + counted["test", "PNEUMONIA"]) / total <= 0.25
    assert 0.2 <= (counted["train", "NORMAL"] + counted["test", "NORMAL"]) / total <= 0.35
    with Image.open(next((tiny_dataset / "train" / "NORMAL").iterdir())) as image:
        assert (image.mode, image.size, image.format) == ("L", (64, 64), "JPEG")


def test_pneumonia_brightens_the_lungs_without_separating_the_classes(tiny_dataset):
    def lung_means(folder: str) -> np.ndarray:
        paths = sorted((tiny_dataset / "train" / folder).iterdir())
        images = np.stack([np.asarray(Image.open(path), dtype=np.float32) for path in paths])
        return images[:, 16:44, 8:26].mean(axis=(1, 2))  # the image-left lung field

    normal, pneumonia = lung_means("NORMAL"), lung_means("PNEUMONIA")
    assert pneumonia.mean() > normal.mean() + 2
    # Not trivial: the lung brightness ranges of the two classes overlap.
    assert pneumonia.min() < normal.max()


def test_classes_are_learnable_but_not_trivially(tmp_path):
    from sklearn.linear_model import LogisticRegression

    write_demo_dataset(tmp_path, n=300, size=32, seed=0)
    images, labels = [], []
    for label, folder in enumerate(("PNEUMONIA", "NORMAL")):
        for path in sorted(tmp_path.glob(f"*/{folder}/*.jpeg")):
            pixels = np.asarray(Image.open(path), dtype=np.float32)
            images.append(((pixels - pixels.mean()) / pixels.std())[::2, ::2].ravel())
            labels.append(label)
    features, labels = np.stack(images), np.array(labels)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:200], order[200:]
    classifier = LogisticRegression(C=0.1, max_iter=2000).fit(features[train], labels[train])
    accuracy = classifier.score(features[test], labels[test])
    majority = max(labels[test].mean(), 1 - labels[test].mean())
    assert majority + 0.08 <= accuracy < 0.99
