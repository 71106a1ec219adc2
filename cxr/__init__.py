"""cxr-pipeline: retraining pipeline for a chest X-ray pneumonia classifier."""

__version__ = "0.1.0"

# Output index order of every model: the tutorial's `classes=['pneumonia', 'normal']`.
CLASSES: tuple[str, str] = ("pneumonia", "normal")
PNEUMONIA, NORMAL = CLASSES
REGISTERED_MODEL_NAME = "cxr-pneumonia"
