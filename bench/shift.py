"""Acquisition-shift stress test: a model's test metrics when the test images look unlike training.

A holdout carved from the training source flatters (same scanners, same processing). This writes
copies of a retrain run's test split with acquisition-like changes (gamma, contrast, blur, noise,
a different resampling path) and scores each model on every variant with `cxr evaluate`'s code.

    python -m bench.shift --split .cxr/splits/<key>/split.parquet \
        --models models:/cxr-pneumonia/3 models:/cxr-pneumonia/4 [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from bench.data import image_files
from bench.orchestration import CHAMPION
from bench.suite import Context

Shift = Callable[[Image.Image, np.random.Generator], Image.Image]


def _gamma(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) / 255
    return Image.fromarray(np.uint8(255 * pixels ** rng.uniform(0.6, 1.6)))


def _contrast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    scaled = (pixels - pixels.mean()) * rng.uniform(0.55, 1.45) + pixels.mean() + rng.uniform(-25, 25)
    return Image.fromarray(np.uint8(np.clip(scaled, 0, 255)))


def _blur_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))), dtype=np.float32)
    return Image.fromarray(np.uint8(np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255)))


def _resample(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(96, 140))  # a low-resolution source, upsampled again
    return image.resize((side, side), Image.Resampling.NEAREST).resize(image.size, Image.Resampling.BICUBIC)


SHIFTS: dict[str, Shift | None] = {
    "none": None,
    "gamma": _gamma,
    "contrast": _contrast,
    "blur+noise": _blur_noise,
    "resample": _resample,
}


def write_shifted(test_rows: pd.DataFrame, out: Path, shift: Shift | None, seed: int = 0) -> Path:
    """The test images, shifted, in the bare NORMAL/PNEUMONIA layout."""
    rng = np.random.default_rng(seed)
    for row in test_rows.itertuples():
        folder = out / row.label.upper()
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(row.path).convert("L")
        if shift is not None:
            image = shift(image, rng)
        image.save(folder / f"{Path(row.path).stem}.png")
    return out


def measure_shift(context: Context) -> dict[str, Any]:
    """The champion `cxr train` registered, scored on `train_dir` (images it never trained on) under
    each shift: the worst AUC, sensitivity and specificity, and the AUC lost to the worst shift.
    """
    from cxr.evaluation.evaluate_folder import evaluate_folder

    paths = image_files(context.data.train_dir)
    rows = pd.DataFrame(
        {"path": list(map(str, paths)), "label": [path.parent.name.lower() for path in paths]}
    )
    metrics = {
        name: evaluate_folder(CHAMPION, write_shifted(rows, context.work / name, shift))["metrics"]
        for name, shift in SHIFTS.items()
    }
    worst = {
        key: min(values[key] for values in metrics.values()) for key in ("auc", "sensitivity", "specificity")
    }
    return {
        "shift_auc_none": round(metrics["none"]["auc"], 4),
        "shift_auc_worst": round(worst["auc"], 4),
        "shift_auc_drop": round(metrics["none"]["auc"] - worst["auc"], 4),
        "shift_sensitivity_worst": round(worst["sensitivity"], 4),
        "shift_specificity_worst": round(worst["specificity"], 4),
        "shift_files": len(paths),
        "shift_metrics": metrics,
    }


def main(argv: list[str] | None = None) -> None:
    from cxr.core.state_folder import configure_environment

    configure_environment()
    from cxr.evaluation.evaluate_folder import evaluate_folder

    parser = argparse.ArgumentParser(prog="python -m bench.shift", description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True, type=Path, help="split.parquet of a retrain run")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    split = pd.read_parquet(args.split)
    test_rows = split[split["split"] == "test"]
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-shift-") as tmp:
        for name, shift in SHIFTS.items():
            folder = write_shifted(test_rows, Path(tmp) / name, shift)
            for model in args.models:
                metrics = evaluate_folder(model, folder)["metrics"]
                results.setdefault(model, {})[name] = {
                    key: metrics[key] for key in ("accuracy", "sensitivity", "specificity", "auc")
                }
                if not args.json:
                    print(model, name, {k: round(v, 4) for k, v in results[model][name].items()})
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
