"""Per-epoch training history that survives a resumed run, and the epochs a Keras backup finished."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxr.core import faults
from cxr.core.atomic_files import write_atomically

ProgressCallback = Callable[[int, dict[str, float]], None]
HISTORY_FILE = "history.json"


# BackupAndRestore's own record of the last finished epoch (a Keras implementation detail, read-only).
BACKUP_METADATA_FILE = "training_metadata.json"


class EpochRecorder:
    """Keeps the full history across resumptions (in the checkpoint folder) and reports each epoch.

    A plain class hooked into Keras through a `LambdaCallback`, so this module imports without Keras.
    """

    def __init__(self, path: Path, resumed_from_epoch: int, progress: ProgressCallback | None):
        self.path = path
        self.progress = progress
        self.history: dict[str, list[float]] = self._earlier_epochs(resumed_from_epoch)
        self._epoch_started = 0.0

    def _earlier_epochs(self, count: int) -> dict[str, list[float]]:
        if count == 0 or not self.path.is_file():
            return {}
        saved = json.loads(self.path.read_text())
        return {key: values[:count] for key, values in saved.items()}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = {key: float(value) for key, value in (logs or {}).items()}
        values["epoch_seconds"] = time.perf_counter() - self._epoch_started
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        write_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(self.history)))
        if self.progress is not None:
            self.progress(epoch + 1, values)
        faults.kill_at("kill_after_epoch", epoch + 1)


def finished_epochs(checkpoint_dir: Path) -> int:
    """Epochs an interrupted run with the same checkpoint folder finished (0 when there is no backup)."""
    metadata = checkpoint_dir / BACKUP_METADATA_FILE
    if not metadata.is_file():
        return 0
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def images_per_second(images_per_epoch: int, epoch_seconds: list[float]) -> float:
    """Throughput of a typical epoch (validation included); the first one also builds the graphs, so it
    only counts when it is the only one."""
    steady = epoch_seconds[1:] or epoch_seconds
    return round(images_per_epoch / max(float(np.median(steady)), 1e-9), 1)
