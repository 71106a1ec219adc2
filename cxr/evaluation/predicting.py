"""Batch prediction: score image files or folders with a trained model, optionally with Grad-CAM overlays.

Every input file becomes one row: a probability and a label when it could be scored, otherwise a
`status` saying why not (the same refusal reasons as ingest's quarantine list, plus `missing` and
`file_too_large`). A bad file never stops the batch.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import CLASSES
from cxr.core.atomic_files import write_atomically
from cxr.core.errors import ModelError
from cxr.data.imaging import DEFAULT_MAX_PIXELS, BadImage, load_greyscale
from cxr.data.scanning import path_text, real_path, scan_folder
from cxr.evaluation.scoring import ImageScorer
from cxr.model.loading import load_model_with_metadata
from cxr.model.operating_points import select
from cxr.model.referral import SCORED as OK
from cxr.model.referral import decide, decision_counts

# `in_domain` / `domain_score` (cxr.evaluation.domain): empty for a model saved without a domain score.
# `decision` (cxr.model.referral): the one field to read; `p_pneumonia` is `probability` under the pyfunc's name.
COLUMNS = [
    "path",
    "probability",
    "label",
    "decision",
    "status",
    "detail",
    "heatmap",
    "in_domain",
    "domain_score",
    "p_pneumonia",
]
# Larger files are refused before decoding; real chest X-rays (even 16-bit DICOM) are far smaller.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
# Images decoded and held in memory at once: bounds memory for folders of any size.
CHUNK_FILES = 64
# Printed on the Grad-CAM overlay of an image the model's domain score flags, and ending its file name.
OUT_OF_DOMAIN_NOTE = "OUT OF DOMAIN"
OUT_OF_DOMAIN_SUFFIX = "-out-of-domain"


@dataclass(frozen=True)
class _Input:
    """One file to score, or a problem found before opening it (missing path, broken link)."""

    path: str
    problem: tuple[str, str] | None = None


def expand_paths(paths: list[Path]) -> list[_Input]:
    """Files named directly, plus every file under named folders (recursively, in path order)."""
    inputs: list[_Input] = []
    for path in map(Path, paths):
        if path.is_dir():
            inputs.extend(_Input(found.path, found.problem) for found in scan_folder(path.resolve()))
        elif path.exists():
            inputs.append(_Input(path_text(str(path.resolve()))))
        else:
            inputs.append(_Input(path_text(str(path.absolute())), ("missing", "no such file or folder")))
    return inputs


def _load_checked(
    path: str, image_size: int, *, max_pixels: int, max_file_bytes: int, min_side: int
) -> np.ndarray:
    """The image at model size; raises BadImage for anything ingest would quarantine, or a too large file.

    `load_greyscale` runs the same decoder as `inspect_image` (format sniffing, pixel limit from the
    header, full decode to catch truncation), so each file is checked and decoded in one pass.
    """
    try:
        size_bytes = os.stat(real_path(path)).st_size
    except OSError as error:
        raise BadImage("unreadable", str(error)) from error
    if size_bytes > max_file_bytes:
        raise BadImage("file_too_large", f"{size_bytes} bytes exceeds the limit of {max_file_bytes}")
    return load_greyscale(Path(path), image_size, max_pixels=max_pixels, min_side=min_side)


def heatmap_path(heatmaps_dir: Path, image_path: str, *, out_of_domain: bool = False) -> Path:
    """`<stem>-<hash of the full path>[-out-of-domain].png`: readable, unique for same-named files in other
    folders, and naming an image the domain score flags."""
    digest = hashlib.sha256(image_path.encode()).hexdigest()[:8]
    return (
        heatmaps_dir / f"{Path(image_path).stem}-{digest}{OUT_OF_DOMAIN_SUFFIX if out_of_domain else ''}.png"
    )


def _score_chunk(
    scorer: ImageScorer,
    chunk: list[_Input],
    *,
    threshold: float,
    max_pixels: int,
    max_file_bytes: int,
    heatmaps_dir: Path | None,
) -> list[dict[str, Any]]:
    rows = {item.path: _failed_row(item.path, *item.problem) for item in chunk if item.problem}
    images: dict[str, np.ndarray] = {}
    for item in chunk:
        if item.problem:
            continue
        try:
            images[item.path] = _load_checked(
                item.path,
                scorer.image_size,
                max_pixels=max_pixels,
                max_file_bytes=max_file_bytes,
                min_side=scorer.min_side,
            )
        except BadImage as error:
            rows[item.path] = _failed_row(item.path, error.reason, error.detail)
    if images:
        scores = scorer.score(np.stack(list(images.values())), threshold)
        for (path, image), scored in zip(images.items(), scores.rows(), strict=True):
            rows[path] = {
                "path": path,
                **scored,
                "status": OK,
                "detail": "",
                "heatmap": _write_heatmap(scorer.domain.network, image, path, scored, heatmaps_dir),
            }
    return [rows[item.path] for item in chunk]


def _failed_row(path: str, reason: str, detail: str) -> dict[str, Any]:
    return {
        "path": path,
        "probability": np.nan,
        "p_pneumonia": np.nan,
        "label": None,
        "decision": decide(reason, None, 0.0, None, None),
        "status": reason,
        "detail": detail,
        "heatmap": None,
        "in_domain": None,
        "domain_score": np.nan,
    }


def _write_heatmap(
    model,  # noqa: ANN001 - a keras.Model
    image: np.ndarray,
    path: str,
    scored: dict[str, Any],
    heatmaps_dir: Path | None,
) -> str | None:
    if heatmaps_dir is None:
        return None
    from cxr.model.gradcam import grad_cam, overlay_png  # imported here: only heat-map runs pay for it

    heat = grad_cam(model, image[..., None])
    flagged = scored["in_domain"] is False
    text = f"{scored['label']} P(pneumonia)={scored['probability']:.3f}" + (
        f" {OUT_OF_DOMAIN_NOTE}" if flagged else ""
    )
    out = overlay_png(image, heat, heatmap_path(heatmaps_dir, path, out_of_domain=flagged), label=text)
    return str(out)


def score_files(
    model,  # noqa: ANN001 - a keras.Model taking (S, S, 1) raw grey images
    metadata: dict[str, Any],
    paths: list[Path],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    heatmaps_dir: Path | None = None,
    operating_point: str | None = None,
) -> pd.DataFrame:
    """One row per input file (COLUMNS), in input order; folders are expanded recursively.

    `label` applies the threshold of the model's operating point `operating_point` (None: its
    default) and `decision` (`cxr.model.referral`) also the domain verdict and the referral band; files that
    cannot be scored have `status` (and `decision`) != 'ok', no probability and a `detail` message.
    """
    try:
        scorer = ImageScorer(model, metadata)
        _, threshold = scorer.operating_point(operating_point)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"model metadata lacks a usable threshold and image_size: {error}") from error
    inputs = expand_paths(paths)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(inputs), CHUNK_FILES):
        rows += _score_chunk(
            scorer,
            inputs[start : start + CHUNK_FILES],
            threshold=threshold,
            max_pixels=max_pixels,
            max_file_bytes=max_file_bytes,
            heatmaps_dir=Path(heatmaps_dir) if heatmaps_dir is not None else None,
        )
    return pd.DataFrame(rows, columns=COLUMNS).astype(
        {"probability": "float64", "p_pneumonia": "float64", "domain_score": "float64"}
    )


def outcome_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """Scored files per predicted label (both classes always present), files per decision (every file: the
    refusals count under their status), failed files per status, and scored files flagged out of domain (None
    when the model has no domain score)."""
    scored = frame[frame["status"] == OK]
    judged = scored["in_domain"].dropna()
    return {
        "by_label": {label: int((scored["label"] == label).sum()) for label in CLASSES},
        "by_decision": decision_counts(frame["decision"]),
        "by_status": dict(sorted(Counter(frame.loc[frame["status"] != OK, "status"]).items())),
        "out_of_domain": int((~judged.astype(bool)).sum()) if len(judged) or scored.empty else None,
    }


def predict_to_csv(
    model_uri: str,
    paths: list[str],
    out_csv: str,
    heatmaps_dir: str | None = None,
    operating_point: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load the model at `model_uri`, score `paths` into `out_csv` at its operating point
    `operating_point` (None: its default); returns the rows and a summary."""
    model, metadata = load_model_with_metadata(model_uri)
    point, threshold = select(metadata, operating_point)
    frame = score_files(
        model,
        metadata,
        [Path(path) for path in paths],
        heatmaps_dir=Path(heatmaps_dir).resolve() if heatmaps_dir else None,
        operating_point=point,
    )
    out_path = write_atomically(Path(out_csv).resolve(), lambda tmp: frame.to_csv(tmp, index=False))
    scored = int((frame["status"] == OK).sum())
    return frame, {
        "scored": scored,
        "failed": len(frame) - scored,
        "out_csv": str(out_path),
        "model_uri": model_uri,
        "model_name": metadata.get("model_name"),
        "threshold": threshold,
        "operating_point": point,
        "heatmaps_dir": str(Path(heatmaps_dir).resolve()) if heatmaps_dir else None,
        **outcome_counts(frame),
    }


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows with NaN as None, since artifacts are JSON."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
