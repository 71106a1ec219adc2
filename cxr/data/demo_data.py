"""A synthetic chest X-ray dataset in the Kaggle layout, for demos and tests without real data.

Each image is drawn from a small anatomical model (body silhouette, two darker lung fields, curved
ribs, spine, heart shadow) with per-patient pose, size and contrast, plus grain. Pneumonia adds patchy
soft opacities inside the lung fields: bacterial cases are few, larger and denser; viral cases many,
small and fainter. Opacity strength varies, so some cases are subtle: at 64 px, a logistic regression
on 16 px thumbnails and a small CNN after 5 epochs on 400 images both reach about 0.8-0.9 test
accuracy (majority class: 0.7), so the task is learnable but not trivial.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr import CLASSES, NORMAL, PNEUMONIA

NORMAL_FRACTION = 0.27  # Kaggle train: 1341 normal of 5216
TEST_FRACTION = 0.15
FOLDERS = {PNEUMONIA: "PNEUMONIA", NORMAL: "NORMAL"}
JPEG_QUALITY = 90
LUNG_CENTRE_X = 0.36


@dataclass(frozen=True)
class _Patient:
    label: str
    kind: str  # "normal", "bacteria" or "virus"
    number: int
    n_images: int
    seed: np.random.SeedSequence


def write_demo_dataset(
    out_dir: Path, *, n: int = 400, size: int = 256, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Write `n` greyscale JPEGs to `out_dir/{train,test}/{NORMAL,PNEUMONIA}/`; return counts per split and class.

    The same (n, size, seed) always gives the same bytes. Counts are keyed by split, then by class
    name as in `cxr.CLASSES`.
    """
    if n < 8:
        raise ValueError("n must be at least 8 so that every split holds both classes")
    root = np.random.SeedSequence(seed)
    plan_rng = np.random.default_rng(root.spawn(1)[0])
    n_normal = max(2, round(n * NORMAL_FRACTION))
    patients = {
        NORMAL: _plan_patients(NORMAL, n_normal, plan_rng),
        PNEUMONIA: _plan_patients(PNEUMONIA, n - n_normal, plan_rng),
    }
    counts = {split: dict.fromkeys(CLASSES, 0) for split in ("train", "test")}
    pneumonia_image_number = 0
    for label in CLASSES:
        for patient, split in zip(patients[label], _patient_splits(patients[label], plan_rng), strict=True):
            folder = Path(out_dir) / split / FOLDERS[label]
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(patient.seed)
            anatomy = _Anatomy.sample(rng)
            for index in range(1, patient.n_images + 1):
                pneumonia_image_number += patient.label == PNEUMONIA
                name = (
                    f"IM-{patient.number:04d}-{index:04d}.jpeg"
                    if patient.kind == "normal"
                    else f"person{patient.number}_{patient.kind}_{pneumonia_image_number}.jpeg"
                )
                pixels = _render(anatomy.jitter(rng), patient.kind, size, rng)
                (folder / name).write_bytes(_jpeg_bytes(pixels))
                counts[split][label] += 1
    return counts


def _plan_patients(label: str, n_images: int, rng: np.random.Generator) -> list[_Patient]:
    """Patients with 1-3 images each, numbered from 1, totalling exactly `n_images`."""
    patients: list[_Patient] = []
    remaining = n_images
    while remaining > 0:
        count = min(remaining, int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])))
        kind = "normal" if label == NORMAL else str(rng.choice(["bacteria", "virus"], p=[0.65, 0.35]))
        patients.append(
            _Patient(label, kind, len(patients) + 1, count, np.random.SeedSequence(rng.integers(2**63)))
        )
        remaining -= count
    return patients


def _patient_splits(patients: list[_Patient], rng: np.random.Generator) -> list[str]:
    """Whole patients to 'test' until about TEST_FRACTION of the images; at least one patient in each split."""
    order = rng.permutation(len(patients))
    target = max(1, round(TEST_FRACTION * sum(p.n_images for p in patients)))
    splits = ["train"] * len(patients)
    in_test = 0
    for position in order[: len(patients) - 1]:
        if in_test >= target:
            break
        splits[position] = "test"
        in_test += patients[position].n_images
    return splits


@dataclass(frozen=True)
class _Anatomy:
    """One patient's body: positions in a [-1, 1] frame, brightness levels, gamma."""

    shift_x: float
    shift_y: float
    angle: float
    scale: float
    body_width: float
    lung_width: float
    lung_height: float
    heart_size: float
    rib_period: float
    rib_curve: float
    tissue: float
    lung_depth: float
    bone: float
    gamma: float
    grain: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Anatomy:
        return cls(
            shift_x=rng.normal(0, 0.03),
            shift_y=rng.normal(0, 0.03),
            angle=rng.normal(0, 0.04),
            scale=rng.uniform(0.9, 1.05),
            body_width=rng.uniform(0.8, 0.92),
            lung_width=rng.uniform(0.22, 0.28),
            lung_height=rng.uniform(0.5, 0.6),
            heart_size=rng.uniform(0.2, 0.28),
            rib_period=rng.uniform(0.15, 0.2),
            rib_curve=rng.uniform(0.3, 0.5),
            tissue=rng.uniform(0.5, 0.65),
            lung_depth=rng.uniform(0.28, 0.38),
            bone=rng.uniform(0.07, 0.13),
            gamma=rng.uniform(0.8, 1.25),
            grain=rng.uniform(0.02, 0.04),
        )

    def jitter(self, rng: np.random.Generator) -> _Anatomy:
        """The same patient on another day: slightly different pose and exposure."""
        return _Anatomy(
            **{
                **self.__dict__,
                "shift_x": self.shift_x + rng.normal(0, 0.015),
                "shift_y": self.shift_y + rng.normal(0, 0.015),
                "angle": self.angle + rng.normal(0, 0.015),
                "gamma": self.gamma * rng.uniform(0.93, 1.07),
            }
        )


def _soft_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 1), 0 outside, with a smooth edge of relative width `edge`."""
    return 1.0 / (1.0 + np.exp(np.minimum((distance - 1.0) / edge, 50.0)))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid resized smoothly to (size, size)."""
    coarse = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _render(anatomy: _Anatomy, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    a = anatomy
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grid_y, grid_x = np.meshgrid(axis, axis, indexing="ij")
    cos, sin = np.cos(a.angle), np.sin(a.angle)
    x = ((grid_x - a.shift_x) * cos - (grid_y - a.shift_y) * sin) / a.scale
    y = ((grid_x - a.shift_x) * sin + (grid_y - a.shift_y) * cos) / a.scale
    edge = 0.04

    body = _soft_inside(np.abs(x / a.body_width) ** 3 + np.abs((y - 0.25) / 1.15) ** 3, edge)
    neck = _soft_inside(np.abs(x / 0.22) ** 4 + np.abs((y + 1.0) / 0.4) ** 4, edge)
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        lx = (x - side * LUNG_CENTRE_X) / a.lung_width
        ly = (y + 0.02) / a.lung_height
        # Flatter at the bottom (diaphragm), narrower at the apex.
        lungs = np.maximum(
            lungs, _soft_inside(lx**2 * (1.0 + 0.5 * (ly < 0) * -ly) + np.abs(ly) ** 2.5, edge * 2)
        )
    heart = _soft_inside(
        ((x - 0.1) / (a.heart_size * 1.2)) ** 2 + ((y - 0.3) / a.heart_size) ** 2, edge * 1.5
    )
    lungs = lungs * (1.0 - 0.85 * heart)
    spine = _soft_inside(np.abs(x / 0.07) ** 4, edge) * (0.8 + 0.2 * np.cos(y * np.pi / 0.09) ** 2)
    ribs = np.clip(np.cos(2 * np.pi * (y - a.rib_curve * x**2) / a.rib_period), 0, 1) ** 3
    ribs = ribs * body * _soft_inside(np.abs(x / (a.body_width * 0.95)) ** 2, edge) * (y < 0.65)
    clavicles = _soft_inside(
        ((np.abs(x) - 0.35) / 0.3) ** 2 + ((y + 0.62 - 0.25 * np.abs(x)) / 0.035) ** 2, 0.1
    )

    image = 0.06 + (a.tissue - 0.06) * np.maximum(body, neck)
    image -= a.lung_depth * lungs * (1.0 + 0.15 * _smooth_noise(rng, size, 6))
    image += a.bone * (ribs * (0.6 + 0.4 * lungs) + clavicles) + 0.18 * spine * body + 0.12 * heart
    if kind != "normal":
        image += _opacities(x, y, lungs, kind, size, rng)
    image = np.clip(image, 0.0, 1.0) ** a.gamma
    image += rng.normal(0.0, a.grain, image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _opacities(
    x: np.ndarray, y: np.ndarray, lungs: np.ndarray, kind: str, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Patchy soft brightening inside the lung fields; strength varies so that some cases are subtle."""
    bacterial = kind == "bacteria"
    count = int(rng.integers(1, 3)) if bacterial else int(rng.integers(3, 8))
    strength = rng.uniform(0.35, 0.8) if bacterial else rng.uniform(0.3, 0.6)
    blobs = np.zeros_like(x)
    for _ in range(count):
        side = rng.choice([-1.0, 1.0])
        cx = side * LUNG_CENTRE_X + rng.normal(0, 0.08)
        cy = rng.uniform(-0.35, 0.4)
        radius = rng.uniform(0.15, 0.3) if bacterial else rng.uniform(0.12, 0.22)
        blobs += np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))) * rng.uniform(0.6, 1.0)
    texture = np.clip(0.8 + 0.5 * _smooth_noise(rng, size, 12), 0.0, 1.0)
    return strength * np.clip(blobs, 0.0, 1.0) * texture * lungs


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
