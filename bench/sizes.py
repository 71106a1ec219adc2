"""How much work each measure does, per preset: `tiny` (CI, every code path), `quick`, `full`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Training measures run one untimed warm-up epoch per variant, then `repeats` rounds of `epochs`
    timed epochs each; the scale-out measure takes the best of `repeats` runs per runner.
    """

    ingest_images: int  # ingested in full, then again with ~1 % new files; also the scale-out files
    train_images: int  # pipeline/default training (its ~70 % train split), prediction and shift files
    image_size: int  # seed model and the pipeline ratios (the tutorial used 224 px)
    default_image_size: int
    batch_size: int  # the tutorial's batch size, used by every pipeline ratio
    default_batch_size: int  # the project's default batch size
    epochs: int
    repeats: int
    # `cxr train` (default model) on its own folder, run first and then again fully cached.
    rerun_images: int
    rerun_image_size: int
    rerun_epochs: int
    matmul_size: int
    # The scale measure: synthetic folders of these sizes (0: skipped), each through `cxr train` twice.
    scale_images_small: int
    scale_images_medium: int
    scale_images_large: int
    scale_image_size: int


PRESETS: dict[str, Sizes] = {
    # Every measure and code path in about a minute on 2 cores; the numbers only prove it runs.
    "tiny": Sizes(
        ingest_images=40,
        train_images=40,
        image_size=64,
        default_image_size=64,
        batch_size=10,
        default_batch_size=16,
        epochs=1,
        repeats=1,
        rerun_images=48,
        rerun_image_size=32,
        rerun_epochs=1,
        matmul_size=256,
        scale_images_small=48,
        scale_images_medium=0,
        scale_images_large=0,
        scale_image_size=32,
    ),
    "quick": Sizes(
        ingest_images=600,
        train_images=280,
        image_size=224,
        default_image_size=128,
        batch_size=10,
        default_batch_size=32,
        epochs=2,
        repeats=3,
        rerun_images=400,
        rerun_image_size=128,
        rerun_epochs=3,
        matmul_size=2048,
        scale_images_small=500,
        scale_images_medium=0,
        scale_images_large=2000,
        scale_image_size=224,
    ),
    # A first `cxr train` of a few minutes, as a nightly retrain on the Kaggle folder is.
    "full": Sizes(
        ingest_images=3000,
        train_images=1000,
        image_size=224,
        default_image_size=224,
        batch_size=10,
        default_batch_size=32,
        epochs=3,
        repeats=3,
        rerun_images=3000,
        rerun_image_size=160,
        rerun_epochs=10,
        matmul_size=4096,
        scale_images_small=2000,
        scale_images_medium=10000,
        scale_images_large=40000,
        scale_image_size=224,
    ),
}
