"""Predict measure: `cxr predict`'s scoring against bare `model.predict` on the same files and model."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import image_files
from bench.orchestration import CHAMPION, cxr_command
from bench.suite import Context

RAW_BATCH_SIZE = 64


def measure_predict(context: Context) -> dict[str, Any]:
    """img/s of `score_files` (what `cxr predict` runs: checks, decode, predict, one row per file) vs a
    bare loop (Pillow decode + resize, then `model.predict`), best of `repeats` alternating runs after
    a warm-up; then `cxr predict --json` on the same folder as a fresh process, start-up included.
    """
    from bench.timing import best_of_interleaved
    from cxr.evaluation.predicting import score_files
    from cxr.model.loading import load_model_with_metadata

    folder = context.data.train_dir
    paths = image_files(folder)
    model, metadata = load_model_with_metadata(CHAMPION)
    size = int(metadata["image_size"])
    score_files(model, metadata, paths[:RAW_BATCH_SIZE])  # tracing and first imports, untimed
    _raw_predict(model, paths[:RAW_BATCH_SIZE], size)
    best, results = best_of_interleaved(
        {
            "ours": lambda: score_files(model, metadata, [folder]),
            "raw": lambda: _raw_predict(model, paths, size),
        },
        repeats=context.sizes.repeats,
    )
    (ours_s, frame), (raw_s, raw) = ((best[name], results[name]) for name in ("ours", "raw"))
    if len(frame) != len(paths) or not np.allclose(frame["probability"], raw, atol=0.05):
        raise RuntimeError("cxr predict and the bare loop disagree on the same files")
    cli = context.work / "predictions.csv"
    command = [*cxr_command(), "predict", str(folder), "--model", CHAMPION, "--out", str(cli), "--json"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), check=False)
    cli_s = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {completed.stderr[-2000:]}")
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "predict_vs_raw": round(raw_s / ours_s, 3),
        "predict_img_s": round(len(paths) / ours_s, 1),
        "predict_raw_img_s": round(len(paths) / raw_s, 1),
        "predict_files": len(paths),
        "predict_cli_wall_s": round(cli_s, 2),
        "predict_cli_img_s": round(summary["scored"] / cli_s, 1),
    }


def _raw_predict(model, paths: list[Path], size: int) -> np.ndarray:  # noqa: ANN001 - a keras.Model
    """P(pneumonia) per file: `Image.open()`, JPEG draft decoding, `.convert('L').resize()`, stacked,
    one `model.predict`.

    The draft (a JPEG decoded at 1/2, 1/4 or 1/8 scale when the target is that much smaller) is what
    `cxr predict` does too: without it a file of twice the model's size reaches the model through
    another downscaling filter, and a lightly trained model's probabilities differ by more than 0.05.
    """
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            image.draft(image.mode, (size, size))
            images.append(np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR)))
    batch = np.stack(images)[..., None].astype(np.float32)
    return model.predict(batch, batch_size=RAW_BATCH_SIZE, verbose=0)[:, 0]
