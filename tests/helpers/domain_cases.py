"""In-domain and out-of-domain images for the domain score's tests, made here: synthetic chest X-rays
(`cxr.data.demo_data`) and what must be flagged (rotated, inverted, cropped, blank, noise, non-X-ray pictures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def chest_images(folder: Path, *, n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` synthetic chest X-rays as uint8 (n, size, size), decoded as the pipeline decodes files."""
    from cxr.data.batches import decode_paths
    from cxr.data.demo_data import write_demo_dataset

    write_demo_dataset(folder, n=n, size=64, seed=seed)
    return decode_paths(sorted(str(path) for path in Path(folder).rglob("*.jpeg")), size)


def crop(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A random square `fraction` of the side, enlarged back to the full size."""
    side = image.shape[0]
    kept = max(2, int(side * fraction))
    row, col = rng.integers(0, side - kept + 1, 2)
    patch = Image.fromarray(image[row : row + kept, col : col + kept])
    return np.asarray(patch.resize((side, side), Image.Resampling.BILINEAR))


def shapes_picture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A picture that is no X-ray: flat shapes of random grey levels on a random background."""
    picture = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(picture)
    for _ in range(8):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(3, size // 2)), y0 + int(rng.integers(3, size // 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=int(rng.integers(0, 256)))
    return np.asarray(picture)


def out_of_domain_cases(chests: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 (n, S, S) images per kind of input the model was never meant to see."""
    rng = np.random.default_rng(seed)
    size = chests.shape[1]
    return {
        "rotated_90": np.rot90(chests, axes=(1, 2)),
        "inverted": 255 - chests,
        "heavy_crop": np.stack([crop(image, 0.3, rng) for image in chests]),
        "blank": np.stack(
            [np.full((size, size), level, np.uint8) for level in np.linspace(0, 255, len(chests))]
        ),
        "noise": rng.integers(0, 256, chests.shape, dtype=np.uint8),
        "shapes": np.stack([shapes_picture(size, rng) for _ in chests]),
    }


def blob_scenes(count: int, size: int, seed: int) -> np.ndarray:
    """Dark (size, size) images with a blob at a random place (odd indices) or none, and mild noise: the
    domain of the hand-weighted blob model (tests.helpers.toy_models)."""
    from tests.helpers.toy_models import blob_image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        corner = tuple(int(v) for v in rng.integers(0, size - size // 4, 2))
        image = blob_image(size, blob=bool(index % 2), corner=corner).astype(np.int16)
        images.append(np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8))
    return np.stack(images)


def add_domain_score(model_folder: Path, train: np.ndarray, valid: np.ndarray, quantile: float = 0.9) -> dict:
    """Fit a domain score for the model in `model_folder` on uint8 (n, S, S) images, as the `domain` stage
    does, and store it in its model.json; returns the metadata."""
    from cxr.evaluation.domain import METADATA_KEY, DomainScorer, feature_layer, fit_guard
    from cxr.model.loading import load_model_with_metadata

    network, metadata = load_model_with_metadata(Path(model_folder))
    scorer = DomainScorer(network, layer=feature_layer(network))
    features = [scorer.features(images[..., None])[1] for images in (train, valid)]
    metadata[METADATA_KEY] = fit_guard(*features, layer=scorer.layer, quantile=quantile).to_json()
    (Path(model_folder) / "model.json").write_text(json.dumps(metadata))
    return metadata
