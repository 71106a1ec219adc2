"""Accelerator set-up: which devices train, in which precision, under which distribution strategy."""

from __future__ import annotations

import logging
from typing import Literal

import keras
import tensorflow as tf
from pydantic import BaseModel

log = logging.getLogger(__name__)


class DeviceInfo(BaseModel):
    """What `configure_devices` chose; small and JSON-friendly so it can go into results and metadata."""

    kind: Literal["gpu", "cpu"]
    names: list[str]
    count: int
    mixed_precision: bool
    strategy: str
    deterministic: bool = False

    def describe(self) -> str:
        """One line for logs, e.g. '2 x gpu (mixed_float16, MirroredStrategy)'."""
        precision = "mixed_float16" if self.mixed_precision else "float32"
        return f"{self.count} x {self.kind} ({precision}, {self.strategy}): {', '.join(self.names)}"


def configure_devices(prefer_gpu: bool = True, *, mixed_precision: bool = True) -> DeviceInfo:
    """List the GPUs, enable memory growth, set the Keras precision policy and describe the strategy.

    On a GPU the policy is `mixed_float16` (models keep their softmax in float32); on the CPU it is
    `float32`, because float16 maths on a CPU is slower and less exact. Safe to call more than once.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and not prefer_gpu:
        _hide_gpus()
        gpus = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # Memory growth can only change before the GPU is first used; a later call keeps the setting.
            log.debug("memory growth already fixed for %s", gpu.name)
    use_mixed = bool(gpus) and mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    if gpus:
        names = [_gpu_name(gpu) for gpu in gpus]
        strategy = "MirroredStrategy" if len(gpus) > 1 else "default"
        return DeviceInfo(
            kind="gpu", names=names, count=len(gpus), mixed_precision=use_mixed, strategy=strategy
        )
    return DeviceInfo(kind="cpu", names=["cpu"], count=1, mixed_precision=False, strategy="default")


def distribution_strategy(info: DeviceInfo) -> tf.distribute.Strategy:
    """The strategy `info` names: MirroredStrategy across several GPUs, else the default one."""
    if info.strategy == "MirroredStrategy":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def seed_everything(seed: int, info: DeviceInfo) -> DeviceInfo:
    """Seed Python, NumPy and TensorFlow; on the CPU also make TF ops deterministic.

    Op determinism costs little on the CPU, so identical seeds give identical weights there. On a GPU
    it forces slow deterministic cuDNN kernels, so GPU runs are seeded but not bit-reproducible.
    """
    keras.utils.set_random_seed(seed)
    deterministic = info.kind == "cpu"
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf.config.experimental.disable_op_determinism()
    return info.model_copy(update={"deterministic": deterministic})


def _hide_gpus() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Visibility is fixed once TensorFlow has used a GPU; the run then still computes on it.
        log.warning("GPUs already in use: cannot hide them for a CPU run")


def _gpu_name(gpu: tf.config.PhysicalDevice) -> str:
    details = tf.config.experimental.get_device_details(gpu)
    return str(details.get("device_name", gpu.name))
