"""The files every measure runs on: a writable working copy (sampled from real X-rays, or synthetic)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
DEMO_IMAGE_SIZE = 256  # like `cxr demo-data`: larger than the 224 px the models see, so resizing is real work
# What users train on: the Kaggle training images, next to the repository when this machine has them.
DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kaggle_train_224"


@dataclass(frozen=True)
class BenchData:
    """`ingest_dir` is ingested in full and then grown by the files in `extra_dir`; `train_dir` trains
    in-process, is predicted and shifted; `rerun_dir` (other files) is what `cxr train` trains on.
    """

    ingest_dir: Path
    extra_dir: Path
    train_dir: Path
    rerun_dir: Path
    source: str


def default_source() -> Path | None:
    """The Kaggle training folder when it is there, else None (synthetic data)."""
    return DEFAULT_SOURCE if DEFAULT_SOURCE.is_dir() else None


def prepare_data(
    work: Path, *, source: Path | None, ingest_images: int, train_images: int, rerun_images: int
) -> BenchData:
    """Create the working folders under `work` (0 images: that folder is skipped).

    The ingest folder comes with ~1 % extra files (in `extra_dir`) for the incremental ingest.
    """
    extra = max(1, round(ingest_images / 100)) if ingest_images else 0
    data = BenchData(
        work / "ingest" / "chest_xray",
        work / "extra",
        work / "train" / "chest_xray",
        work / "rerun" / "chest_xray",
        str(source.resolve()) if source else f"synthetic (cxr.data.demo_data, {DEMO_IMAGE_SIZE} px)",
    )
    if source is None:
        from cxr.data.demo_data import write_demo_dataset

        if ingest_images:
            write_demo_dataset(data.ingest_dir, n=ingest_images, size=DEMO_IMAGE_SIZE, seed=0)
            write_demo_dataset(data.extra_dir, n=max(8, extra), size=DEMO_IMAGE_SIZE, seed=1)
            _keep_first(data.extra_dir, extra)
        if train_images:
            write_demo_dataset(data.train_dir, n=train_images, size=DEMO_IMAGE_SIZE, seed=2)
        if rerun_images:
            write_demo_dataset(data.rerun_dir, n=rerun_images, size=DEMO_IMAGE_SIZE, seed=3)
        return data
    files = image_files(source)
    if len(files) < max(ingest_images + extra, train_images + rerun_images):
        raise SystemExit(f"{source} holds {len(files)} images; the benchmark needs more")
    if ingest_images:
        chosen = _spread(files, ingest_images + extra)
        _copy(source, chosen[:ingest_images], data.ingest_dir)
        _copy(source, chosen[ingest_images:], data.extra_dir)
    # Disjoint samples: the model `cxr train` registers is predicted and shifted on `train_dir`.
    training = _spread(files, train_images) if train_images else []
    _copy(source, training, data.train_dir)
    if rerun_images:
        chosen = set(training)
        _copy(source, _spread([path for path in files if path not in chosen], rerun_images), data.rerun_dir)
    return data


def image_files(root: Path) -> list[Path]:
    """Every image file under `root`, sorted."""
    return sorted(
        path for path in Path(root).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def add_extra_files(data: BenchData) -> list[Path]:
    """Move the extra files into the ingest folder (same relative layout, names marked as new)."""
    added = []
    for path in image_files(data.extra_dir):
        target = data.ingest_dir / path.relative_to(data.extra_dir)
        target = target.with_name(f"{target.stem}-new{target.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        added.append(target)
    return added


def _spread(items: list[Path], count: int) -> list[Path]:
    """`count` items evenly spaced over `items` (so a sorted listing gives both classes)."""
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def _copy(source: Path, files: list[Path], target: Path) -> None:
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def _keep_first(root: Path, count: int) -> None:
    for path in image_files(root)[count:]:
        path.unlink()
