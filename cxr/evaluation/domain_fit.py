"""Fit a trained model's domain score (`cxr.evaluation.domain`) on its training data and store it with the model.

The model file is not changed: the guarded model is a new folder holding the same `model.keras` (a hard link
where the file system allows) and a `model.json` with a `domain` section, so the train stage's cached output
stays as it was and refitting the score never retrains.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cxr import CLASSES
from cxr.config.params import DomainParams
from cxr.core.atomic_files import write_atomically
from cxr.data.batches import BatchesResult
from cxr.data.shards import ShardReader, read_labels
from cxr.evaluation.domain import (
    METADATA_KEY,
    MIN_SIDE_KEY,
    DomainGuard,
    DomainScorer,
    feature_layer,
    fit_guard,
)
from cxr.evaluation.metrics import classification_metrics
from cxr.evaluation.risk_coverage import answered_metrics
from cxr.evaluation.scoring import pneumonia_index
from cxr.model.loading import METADATA_FILE, load_model_with_metadata
from cxr.model.referral import referral_band

# Images read from the shards at once: bounds memory for splits of any size (a chunk and its float32 copy for
# the network: 31 MB at 224 px).
READ_CHUNK = 128
PNEUMONIA_INDEX = CLASSES.index("pneumonia")
NO_GUARD_NOTE = "the model was saved without a domain score: no image is judged in or out of domain"


def split_outputs(
    scorer: DomainScorer, batches: BatchesResult, split: str, rows: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(softmax, the guard's per-component features) of the images `rows` (default: all) of `split`, read from
    its shards in chunks."""
    reader = ShardReader(batches.shards(split))
    rows = np.arange(len(reader)) if rows is None else np.sort(rows)
    try:
        chunks = [
            scorer.features(reader.gather(rows[start : start + READ_CHUNK]))
            for start in range(0, len(rows), READ_CHUNK)
        ]
    finally:
        reader.close()
    softmax = np.concatenate([chunk[0] for chunk in chunks])
    return softmax, [np.concatenate(parts) for parts in zip(*(chunk[1] for chunk in chunks), strict=True)]


def sample_rows(count: int, cap: int, seed: int) -> np.ndarray | None:
    """A seeded sample of `cap` of a split's `count` rows, in order; None (all rows) when it has no more."""
    if count <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size=cap, replace=False))


def guard_model(
    model_path: Path,
    batches: BatchesResult,
    params: DomainParams,
    *,
    seed: int,
    min_image_side: int,
    out_dir: Path,
) -> DomainGuard:
    """Fit the domain score of the model at `model_path` on (at most `params.fit_images` of) the train split,
    its threshold at `params.quantile` of the validation split and of as many other training images, and write
    the guarded model (`model.keras` + `model.json`, which also keeps `min_image_side`, the smallest image side
    the run's ingest accepted) into `out_dir`. Of the validation and the test split too, at most `fit_images`
    (seeded samples) are read: at most 4 x `fit_images` images in all, whatever the archive's size."""
    network, metadata = load_model_with_metadata(model_path)
    scorer = DomainScorer(network, layer=feature_layer(network))
    available = {
        split: sum(shard.n for shard in batches.shards(split)) for split in ("train", "valid", "test")
    }
    # A sample is enough for a Gaussian of a few hundred features, and the forward passes are the cost.
    order = np.random.default_rng(seed).permutation(available["train"])
    fit_rows, held_rows = order[: params.fit_images], order[params.fit_images : 2 * params.fit_images]
    fit = split_outputs(scorer, batches, "train", fit_rows)[1]
    valid, test = (
        split_outputs(scorer, batches, split, sample_rows(available[split], params.fit_images, seed))[1]
        for split in ("valid", "test")
    )
    # The threshold is a far tail quantile: the validation split alone holds a few hundred images, so training
    # images left out of the fit join it (measured: the validation split's 99th percentile varied enough to flag
    # 2 % of the test split).
    calibration = valid
    if len(held_rows):
        held = split_outputs(scorer, batches, "train", held_rows)[1]
        calibration = [np.concatenate(parts) for parts in zip(valid, held, strict=True)]
    guard = fit_guard(fit, calibration, layer=scorer.layer, quantile=params.quantile)
    # Not used to fit or to calibrate: how often the score flags the run's own held-out images.
    guard.summary.update(
        valid_flagged_share=guard.flagged_share(valid), test_flagged_share=guard.flagged_share(test)
    )
    guarded = {**metadata, METADATA_KEY: guard.to_json(), MIN_SIDE_KEY: min_image_side}
    write_guarded_model(Path(model_path), guarded, Path(out_dir))
    return guard


def write_guarded_model(model_path: Path, metadata: dict, out_dir: Path) -> Path:
    """`out_dir/model.keras` (the same bytes) and `out_dir/model.json` (`metadata`); returns the model path."""
    target = out_dir / model_path.name
    out_dir.mkdir(parents=True, exist_ok=True)

    def link_or_copy(temporary: Path) -> None:
        try:
            os.link(model_path, temporary)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(model_path, temporary)

    write_atomically(target, link_or_copy)
    write_atomically(out_dir / METADATA_FILE, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2)))
    return target


def domain_summary(
    model_path: Path, batches: BatchesResult, split: str, *, threshold: float
) -> dict[str, Any]:
    """Images of `split` the model's domain score flags, and the metrics on the others (`threshold`: the
    operating point's), and coverage and rates on the images answered alone (in domain, outside the referral
    band); `out_of_domain_share` None when the model has no domain score."""
    network, metadata = load_model_with_metadata(model_path)
    guard = DomainGuard.from_metadata(metadata)
    if guard is None:
        return {"out_of_domain": None, "out_of_domain_share": None, "domain_note": NO_GUARD_NOTE}
    softmax, features = split_outputs(DomainScorer(network, guard), batches, split)
    inside = guard.in_domain(guard.scores(features))
    is_pneumonia = read_labels(batches.shards(split)) == PNEUMONIA_INDEX
    return {
        "out_of_domain": int((~inside).sum()),
        "out_of_domain_share": float(np.mean(~inside)) if len(inside) else None,
        "domain_threshold": guard.threshold,
        "n_in_domain": int(inside.sum()),
        "metrics_in_domain": classification_metrics(
            is_pneumonia[inside], softmax[inside, pneumonia_index(metadata)], threshold
        )
        if inside.any()
        else None,
        # Answered alone: in domain and outside the referral band (`cxr.evaluation.risk_coverage`).
        "answered_alone": answered_metrics(
            softmax[:, pneumonia_index(metadata)],
            is_pneumonia,
            threshold,
            referral_band(metadata),
            in_domain=inside,
        ),
    }
