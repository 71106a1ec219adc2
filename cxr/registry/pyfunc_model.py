"""The registered model as MLflow serves it: a pyfunc that takes image bytes or arrays and returns labels.

This module and the `cxr` modules it imports travel inside every logged model (MLflow `code_paths`),
so anyone with MLflow, TensorFlow/Keras, Pillow and (for DICOM) pydicom can load and serve it without
this repository. It must therefore import nothing beyond those and the library modules it ships with.

Input: a DataFrame column `image`; each cell is encoded file bytes (PNG, JPEG, DICOM...), the same
base64-encoded (as a JSON client sends them), or a uint8/float grey or RGB array on the 0..255 scale.
Output: one row per image with `p_pneumonia` (also as `probability`, its name in `cxr predict`'s CSV),
`label`, `decision`, the operating point and threshold used, and a `status` that is `ok` or why the image could
not be scored (the reasons ingest quarantines for), and `in_domain` / `domain_score` (`cxr.evaluation.domain`):
False for an image unlike the training images, which still gets its probability and label; null / NaN when the
model was saved without a domain score. `decision` (`cxr.model.referral`) is the field to read alone: `pneumonia`
or `normal` only where the system answers alone, else `refer`, `out_of_domain` or the refusal status. Scoring
is `cxr.evaluation.scoring`'s, the same as `cxr predict`'s.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from cxr.data.imaging import BadImage, ImageInfo, check_min_side, decode_greyscale
from cxr.evaluation.scoring import ImageScorer
from cxr.model.operating_points import operating_points
from cxr.model.referral import SCORED as OK
from cxr.model.referral import decide

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = (
    "p_pneumonia",
    "label",
    "decision",
    "operating_point",
    "threshold",
    "status",
    "detail",
    "in_domain",
    "domain_score",
    "probability",
)
# `context.artifacts` keys of a logged model.
KERAS_ARTIFACT = "keras_model"
METADATA_ARTIFACT = "metadata"
OPERATING_POINT_PARAM = "operating_point"


def grey_from_array(pixels: Any, size: int, min_side: int = 0) -> np.ndarray:  # noqa: ANN401 - array-like cell
    """A (size, size) float32 image from a grey (H, W), (H, W, 1) or RGB (H, W, 3) array on 0..255 whose shorter
    side is at least `min_side`.

    uint8 arrays are resized exactly as decoded files are (Pillow bilinear), so an array and the
    file it came from score the same.
    """
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        array = array[..., 0] if array.shape[-1] == 1 else _luma(array)
    if array.ndim != 2 or min(array.shape) < 1:
        raise BadImage(
            "bad_array", f"expected (H, W), (H, W, 1) or (H, W, 3) pixels, got shape {array.shape}"
        )
    check_min_side(ImageInfo(width=array.shape[1], height=array.shape[0], mode="", format="array"), min_side)
    if array.dtype == np.uint8:
        image = Image.fromarray(array)
    elif np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise BadImage("bad_array", "pixel values must be finite and within 0..255")
        image = Image.fromarray(array)
    else:
        raise BadImage("bad_array", f"pixels of dtype {array.dtype} are not numbers")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's RGB -> L conversion, keeping uint8 input uint8."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).convert("L"))
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_from_cell(value: Any, size: int, min_side: int = 0) -> np.ndarray:  # noqa: ANN401 - any cell
    """One cell of the `image` column as a (size, size) float32 image; BadImage says why not (among the
    reasons: a shorter side below `min_side`, `too_small`).

    Text is base64 (what JSON clients send); so are bytes that are valid base64 (MLflow's server
    hands `{"inputs": ...}` payloads over undecoded), since no image file is valid base64.
    """
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return decode_greyscale(_base64_payload(data) or data, size, min_side=min_side).astype(np.float32)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise BadImage("missing", "empty cell")
    return grey_from_array(value, size, min_side)


def _base64_payload(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


class PneumoniaModel(mlflow.pyfunc.PythonModel):
    """P(pneumonia) and a label at a named operating point, for image bytes or arrays."""

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow PythonModelContext
        import keras

        import cxr.model.networks  # noqa: F401 - registers the custom layers the saved network uses

        with open(context.artifacts[METADATA_ARTIFACT]) as handle:
            self.metadata = json.load(handle)
        self.points, self.default_point = operating_points(self.metadata)
        # safe_mode: the file holds only registered layers, so nothing in it runs arbitrary code.
        self.network = keras.saving.load_model(
            context.artifacts[KERAS_ARTIFACT], compile=False, safe_mode=True
        )
        self.scorer = ImageScorer(self.network, self.metadata)

    def predict(
        self,
        context,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,  # noqa: ANN001
    ) -> pd.DataFrame:
        point = (params or {}).get(OPERATING_POINT_PARAM) or self.default_point
        if point not in self.points:
            raise ValueError(f"unknown operating point {point!r}; this model has {sorted(self.points)}")
        _, threshold = self.scorer.operating_point(point)
        rows: list[dict[str, Any]] = []
        images: dict[int, np.ndarray] = {}
        for index, cell in enumerate(_image_cells(model_input)):
            try:
                images[index] = image_from_cell(cell, self.scorer.image_size, self.scorer.min_side)
                rows.append({"status": OK, "detail": ""})
            except BadImage as error:
                rows.append(
                    {
                        "status": error.reason,
                        "detail": error.detail,
                        "decision": decide(error.reason, None, 0.0, None, None),
                    }
                )
        if images:
            scores = self.scorer.score(np.stack(list(images.values())), threshold)
            for index, scored in zip(images, scores.rows(), strict=True):
                rows[index].update(scored)
        frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        frame["operating_point"], frame["threshold"] = point, threshold
        return frame.astype(
            {
                "p_pneumonia": "float64",
                "probability": "float64",
                "domain_score": "float64",
                "in_domain": "object",
            }
        )


def _image_cells(model_input: Any) -> list[Any]:  # noqa: ANN401 - DataFrame, dict or list from mlflow
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"input needs a column {IMAGE_COLUMN!r}; got {list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, dict) and IMAGE_COLUMN in model_input:
        return list(model_input[IMAGE_COLUMN])
    raise ValueError(
        f"input must be a DataFrame with a column {IMAGE_COLUMN!r}, got {type(model_input).__name__}"
    )
