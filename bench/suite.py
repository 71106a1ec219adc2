"""The measures, their result keys and goals: the one list the runner, the docs and the test read.

Standard library only (see bench/run.py): each measure's code is imported when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import BenchData
from bench.sizes import Sizes


@dataclass
class Context:
    """What a measure gets: the files, its own working folder, the sizes, earlier results, a Prefect API."""

    data: BenchData
    work: Path
    sizes: Sizes
    workers: int
    api_url: str | None
    results: dict[str, Any] = field(default_factory=dict)
    # Train splits prepared so far, by image size (`bench.training.training_data`).
    training_sets: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """`function` ("module:name") returns exactly `keys` (finite numbers) plus any nested details.

    `requires`: measures whose results or side effects (a registered model) it uses; they run first.
    `folders`: which of BenchData's folders it reads. `server`: it runs flows or `cxr` commands.
    """

    name: str
    function: str
    keys: tuple[str, ...]
    requires: tuple[str, ...] = ()
    folders: frozenset[str] = frozenset()
    server: bool = False

    def run(self, context: Context) -> dict[str, Any]:
        module, name = self.function.split(":")
        function: Callable[[Context], dict[str, Any]] = getattr(importlib.import_module(module), name)
        results = function(context)
        numbers = {key for key, value in results.items() if isinstance(value, int | float)}
        if numbers != set(self.keys):
            raise RuntimeError(
                f"measure {self.name} returned keys {sorted(numbers)}, declared {sorted(self.keys)}: "
                "update bench/suite.py"
            )
        return results


MEASURES: tuple[Measure, ...] = (
    Measure(
        "ingest",
        "bench.measures:measure_ingest",
        (
            "ingest_vs_decode",
            "ingest_cores_used",
            "ingest_vs_decode_goal",
            "ingest_cpu_utilisation",
            "ingest_img_s",
            "plain_decode_img_s",
            "ingest_full_s",
            "ingest_files",
            "incremental_ingest_ratio",
            "ingest_incremental_s",
            "ingest_incremental_new_files",
            "ingest_incremental_reused",
        ),
        folders=frozenset({"ingest"}),
    ),
    Measure(
        "scaleout",
        "bench.scaleout:measure_scaleout",
        (
            "dask_vs_threads",
            "ingest_threads_s",
            "ingest_dask_s",
            "dask_cluster_start_s",
            "scaleout_files",
            "dask_workers",
        ),
        folders=frozenset({"ingest"}),
        server=True,
    ),
    Measure(
        "pipelines",
        "bench.training:measure_pipelines",
        (
            "pipeline_efficiency",
            "vs_tutorial_pipeline",
            "pipeline_efficiency_median",
            "vs_tutorial_pipeline_median",
            "train_seed_img_s",
            "train_seed_in_memory_img_s",
            "train_tutorial_img_s",
            "tutorial_loading_img_s",
            "vs_tutorial_bound",
            "predict_seed_img_s",
            "pipeline_train_images",
            "pipeline_image_size",
            "pipeline_batch_size",
        ),
        folders=frozenset({"train"}),
    ),
    Measure(
        "default",
        "bench.training:measure_default_model",
        (
            "train_default_img_s",
            "train_default_augmented_img_s",
            "predict_default_img_s",
            "default_image_size",
            "default_batch_size",
        ),
        folders=frozenset({"train"}),
    ),
    Measure(
        "flops",
        "bench.training:measure_flops",
        (
            "flop_efficiency",
            "seed_flop_efficiency",
            "default_forward_gflop_per_image",
            "seed_forward_gflop_per_image",
            "default_training_gflop_s",
            "train_seed_gflop_s",
            "matmul_gflop_s",
        ),
        requires=("pipelines", "default"),
    ),
    Measure(
        "orchestration",
        "bench.orchestration:measure_orchestration",
        (
            "cached_rerun_ratio",
            "cached_rerun_in_process_ratio",
            "train_first_wall_s",
            "train_rerun_wall_s",
            "train_first_duration_s",
            "train_rerun_duration_s",
            "train_import_floor_s",
            "rerun_images",
            "orchestration_overhead_s",
            "orchestration_overhead_cached_s",
        ),
        folders=frozenset({"rerun"}),
        server=True,
    ),
    Measure(
        "startup",
        "bench.startup:measure_startup",
        ("startup_no_server_s", "startup_with_server_s", "train_cached_with_server_wall_s"),
        requires=("orchestration",),
        folders=frozenset({"rerun"}),
        server=True,
    ),
    Measure(
        "predict",
        "bench.inference:measure_predict",
        (
            "predict_vs_raw",
            "predict_img_s",
            "predict_raw_img_s",
            "predict_files",
            "predict_cli_wall_s",
            "predict_cli_img_s",
        ),
        requires=("orchestration",),
        folders=frozenset({"train"}),
        server=True,
    ),
    Measure(
        "domain",
        "bench.domain:measure_domain",
        (
            "domain_predict_overhead",
            "domain_predict_img_s",
            "domain_plain_predict_img_s",
            "domain_predict_files",
            "domain_flow_overhead",
            "domain_stage_s",
            "domain_out_of_domain_files",
        ),
        requires=("orchestration",),
        folders=frozenset({"train"}),
        server=True,
    ),
    Measure(
        "shift",
        "bench.shift:measure_shift",
        (
            "shift_auc_none",
            "shift_auc_worst",
            "shift_auc_drop",
            "shift_sensitivity_worst",
            "shift_specificity_worst",
            "shift_files",
        ),
        requires=("orchestration",),
        folders=frozenset({"train"}),
    ),
    Measure(
        "referral",
        "bench.referral:measure_referral",
        (
            "referral_files",
            "referral_observed_targets_met",
            "referral_bootstrap_targets_met",
            "referral_bootstrap_not_answered",
        ),
        requires=("orchestration",),
        folders=frozenset({"train"}),
    ),
    Measure(
        "scale",
        "bench.scale:measure_scale",
        (
            "scale_images_smallest",
            "scale_images_largest",
            "scale_rss_growth",
            "scale_time_per_image_spread",
            "scale_ingest_cpu_spread",
            "scale_cached_rerun_max_s",
        ),
        server=True,
    ),
)
BY_NAME: dict[str, Measure] = {measure.name: measure for measure in MEASURES}

# key -> (comparison, goal); ingest_vs_decode's goal depends on the cores used and is added per run.
GOALS: dict[str, tuple[str, float]] = {
    "pipeline_efficiency": (">=", 0.95),
    "vs_tutorial_pipeline": (">=", 1.4),
    "cached_rerun_ratio": ("<=", 0.03),
    "incremental_ingest_ratio": ("<=", 0.05),
    "flop_efficiency": (">=", 0.5),
    "orchestration_overhead_s": ("<", 2.0),
    "train_cached_with_server_wall_s": ("<=", 8.0),
    "predict_vs_raw": (">=", 0.9),
    "domain_predict_overhead": ("<=", 0.10),
    "domain_flow_overhead": ("<=", 0.10),
    "scale_rss_growth": ("<=", 1.2),
    "scale_time_per_image_spread": ("<=", 0.2),
    "scale_cached_rerun_max_s": ("<", 15.0),
}


def selection(names: list[str]) -> list[Measure]:
    """The named measures and everything they require, each once, in MEASURES order."""
    chosen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in chosen:
            chosen.add(name)
            pending.extend(BY_NAME[name].requires)
    return [measure for measure in MEASURES if measure.name in chosen]


def expected_keys(measures: list[Measure] | tuple[Measure, ...] = MEASURES) -> list[str]:
    """Every numeric result key the given measures report."""
    return [key for measure in measures for key in measure.keys]
