"""Log a trained model to MLflow as a self-contained pyfunc (`cxr.registry.pyfunc_model`) with its metadata.

The logged model holds the byte-identical `model.keras` and `model.json` (artifacts), the `cxr`
modules the pyfunc imports (`code_paths`, found by reading their imports), a signature with named
columns, an input example, explicit pip requirements and, in the MLmodel metadata, the classes,
operating points, preprocessing and the Keras/TensorFlow versions that saved the network.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

from cxr import CLASSES, PNEUMONIA
from cxr.core.import_closure import PACKAGE, PACKAGE_DIR, import_closure, module_file
from cxr.model.operating_points import operating_points
from cxr.registry.pyfunc_model import IMAGE_COLUMN, KERAS_ARTIFACT, METADATA_ARTIFACT, OPERATING_POINT_PARAM

ENTRY_MODULE = "cxr.registry.pyfunc_entry"
ENTRY_FILE = module_file(ENTRY_MODULE)
# What a loading environment needs: the network's runtime, the decoders, and what the shipped modules import.
RUNTIME_PACKAGES = ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow", "pydantic", "pydicom")
PREPROCESSING = {
    "input": "column `image`: encoded file bytes (PNG, JPEG, DICOM, ...), the same as base64 text, "
    "or a grey (H, W) / (H, W, 1) or RGB (H, W, 3) uint8 or float array on 0..255",
    "decode": "Pillow; DICOM: first frame, modality LUT and VOI window applied, MONOCHROME1 inverted",
    "grey": "8-bit grey; RGB by ITU-R 601 luma; 16-bit and float data stretched over their own range",
    "resize": "stretched to image_size x image_size (aspect ratio not kept), bilinear",
    "scale": "raw 0..255 grey levels; the network standardises internally",
}


def shipped_modules(entry: str = ENTRY_MODULE) -> list[Path]:
    """Source files of every `cxr` module `entry` imports, directly or through others, with their packages'
    `__init__.py` (so `cxr.<part>.<module>` imports resolve where the model is loaded).

    Read from the import statements (`cxr.core.import_closure`), so what the pyfunc needs travels with it
    and nothing else does; no module is imported to find out.
    """
    return sorted(module_file(name) for name in import_closure(entry) if name != entry)


def pip_requirements() -> list[str]:
    """The installed versions of `RUNTIME_PACKAGES`, pinned."""
    return [f"{package}=={package_version(package)}" for package in RUNTIME_PACKAGES]


def model_metadata(trained: dict[str, Any], model_sha256: str) -> dict[str, Any]:
    """MLmodel metadata: what the outputs mean, the decision rule, preprocessing and provenance."""
    points, default = operating_points(trained)
    return {
        "classes": list(trained.get("classes", CLASSES)),
        "positive_class": PNEUMONIA,
        "output": "p_pneumonia (also as probability), label (pneumonia/normal), decision, operating_point, "
        "threshold, status, detail, in_domain (false: unlike the training images; null: no domain score), "
        "domain_score",
        "domain_threshold": (trained.get("domain") or {}).get("threshold"),
        "label_rule": "pneumonia when p_pneumonia >= the operating point's threshold",
        "decision": "the field to read alone: the refusal status when not scored (status), else out_of_domain "
        "when in_domain is false, else refer inside the referral band, else the label",
        "referral": trained.get("referral"),
        "operating_points": points,
        "default_operating_point": default,
        "image_size": int(trained["image_size"]),
        "preprocessing": PREPROCESSING,
        "architecture": trained.get("model_name"),
        "model_sha256": model_sha256,
        "keras_version": package_version("keras"),
        "tensorflow_version": package_version("tensorflow"),
    }


def signature(default_point: str):  # noqa: ANN201 - mlflow ModelSignature; mlflow is imported lazily
    """Named columns in and out, and the operating point as a request parameter."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [
        ColSpec(DataType.double, "p_pneumonia", required=False),
        ColSpec(DataType.string, "label", required=False),
        ColSpec(DataType.string, "decision"),
        ColSpec(DataType.string, "operating_point"),
        ColSpec(DataType.double, "threshold"),
        ColSpec(DataType.string, "status"),
        ColSpec(DataType.string, "detail"),
        ColSpec(DataType.boolean, "in_domain", required=False),
        ColSpec(DataType.double, "domain_score", required=False),
        ColSpec(DataType.double, "probability", required=False),
    ]
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec(OPERATING_POINT_PARAM, DataType.string, default_point)]),
    )


def input_example(image_size: int) -> dict[str, list[bytes]]:
    """One PNG (a grey gradient at the model's size) in the `image` column."""
    from PIL import Image

    gradient = np.tile(np.linspace(0, 255, image_size, dtype=np.uint8), (image_size, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="PNG")
    return {IMAGE_COLUMN: [buffer.getvalue()]}


def log_pyfunc_model(model_path: str | Path, metadata_path: str | Path, *, model_sha256: str, name: str):  # noqa: ANN201
    """Log the trained files as pyfunc model `name` into the active MLflow run; returns mlflow's ModelInfo."""
    import mlflow

    trained = json.loads(Path(metadata_path).read_text())
    metadata = model_metadata(trained, model_sha256)
    with tempfile.TemporaryDirectory(prefix="cxr-pyfunc-") as staging:
        code = Path(staging) / PACKAGE
        for source in shipped_modules():
            target = code / source.relative_to(PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(ENTRY_FILE),
            artifacts={KERAS_ARTIFACT: str(model_path), METADATA_ARTIFACT: str(metadata_path)},
            code_paths=[str(code)],
            signature=signature(metadata["default_operating_point"]),
            input_example=input_example(metadata["image_size"]),
            pip_requirements=pip_requirements(),
            metadata=metadata,
        )
