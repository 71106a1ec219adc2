"""`python -m bench`: run the measures and print/write one JSON object.

Only the standard library is imported at module level: ingest's worker processes re-import the
main module, and the state folder must be set before Prefect or TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MEASURES = ("ingest", "pipelines", "default", "orchestration")
# key -> (comparison, goal); ingest_vs_decode's goal depends on the cores used and is added per run.
GOALS: dict[str, tuple[str, float]] = {
    "pipeline_efficiency": (">=", 0.95),
    "vs_tutorial_pipeline": (">=", 1.4),
    "cached_rerun_ratio": ("<=", 0.03),
    "incremental_ingest_ratio": ("<=", 0.05),
    "flop_efficiency": (">=", 0.5),
    "orchestration_overhead_s": ("<", 2.0),
}
# Variables that would point the benchmark at the user's own state instead of its throwaway one.
_STATE_VARIABLES = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_LOCAL_STORAGE_PATH",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "KERAS_HOME",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 cores")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--data", type=Path, help="image folder to sample from (default: synthetic demo data)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--gpu", action="store_true", help="require a GPU and train in mixed precision")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(MEASURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (printed on stderr)")
    for field in ("ingest_images", "train_images", "image_size", "default_image_size", "epochs", "repeats"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, help="override the preset's value")
    args = parser.parse_args(argv)
    args.measures = tuple(args.only.split(",")) if args.only else MEASURES
    unknown = set(args.measures) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measure(s) {sorted(unknown)}; choose from {','.join(MEASURES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.command = shlex.join(["python", "-m", "bench", *argv])
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    _isolate_state(work / "cxr-home")
    try:
        report = run_benchmarks(args, work)
    finally:
        if args.keep:
            _log(f"working folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, allow_nan=False, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    if args.json:
        print(text)
    else:
        _print_table(report)
    return 0


def run_benchmarks(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the selected measures in a fixed order and assemble the report."""
    from bench.data import prepare_data
    from bench.measures import FULL, QUICK, machine, peak_memory_mib

    started = time.perf_counter()
    load_before = machine()["load_average_1m"]
    sizes = _sizes(args, QUICK if args.quick else FULL)
    trains_here = {"pipelines", "default"} & set(args.measures)
    device = _configure_device(args.gpu) if trains_here or args.gpu else None
    data = prepare_data(
        work / "data",
        source=args.data,
        ingest_images=sizes.ingest_images if "ingest" in args.measures else 0,
        train_images=sizes.train_images if set(args.measures) - {"ingest"} else 0,
    )
    results: dict[str, Any] = {}
    for name in args.measures:
        _log(f"measuring {name} ...")
        measure_started = time.perf_counter()
        results.update(_MEASURE_FUNCTIONS[name](data, work / name, sizes))
        _log(f"{name} done in {time.perf_counter() - measure_started:.1f} s")
    if "train_seed_gflop_s" in results and "matmul_gflop_s" in results:
        results["seed_flop_efficiency"] = round(results["train_seed_gflop_s"] / results["matmul_gflop_s"], 3)
    return {
        "results": results,
        "goals": goal_table(results),
        "peak_memory_mib": peak_memory_mib(),
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "device": device,
        "data_source": data.source,
        "sizes": dataclasses.asdict(sizes),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": args.command,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def goal_table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each ratio with a goal: its value, the goal, and whether it was met."""
    goals = dict(GOALS)
    if "ingest_vs_decode_goal" in results:
        goals["ingest_vs_decode"] = (">=", results["ingest_vs_decode_goal"])
    table = {}
    for key, (comparison, target) in goals.items():
        if key not in results:
            continue
        value = results[key]
        met = {">=": value >= target, "<=": value <= target, "<": value < target}[comparison]
        table[key] = {
            "value": value,
            "goal": f"{comparison} {target}",
            "met": bool(met and math.isfinite(value)),
        }
    return table


def _measure_ingest(data, work: Path, sizes) -> dict[str, Any]:
    from bench.measures import measure_ingest

    return measure_ingest(data, work, workers=os.cpu_count() or 1)


def _measure_pipelines(data, work: Path, sizes) -> dict[str, Any]:
    from bench.measures import measure_pipelines, prepare_training_data

    training = prepare_training_data(data.train_dir, work, [sizes.image_size])
    return measure_pipelines(training[sizes.image_size], work, sizes)


def _measure_default(data, work: Path, sizes) -> dict[str, Any]:
    from bench.measures import measure_default_model, prepare_training_data

    training = prepare_training_data(data.train_dir, work, [sizes.default_image_size])
    return measure_default_model(training[sizes.default_image_size], sizes)


def _measure_orchestration(data, work: Path, sizes) -> dict[str, Any]:  # noqa: ARG001 - own demo data
    from bench.measures import measure_orchestration

    return measure_orchestration(work, sizes)


_MEASURE_FUNCTIONS = {
    "ingest": _measure_ingest,
    "pipelines": _measure_pipelines,
    "default": _measure_default,
    "orchestration": _measure_orchestration,
}


def _sizes(args: argparse.Namespace, preset):
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(preset)
        if getattr(args, field.name, None) is not None
    }
    return dataclasses.replace(preset, **overrides)


def _configure_device(gpu: bool) -> dict[str, Any]:
    """CPU: float32. `--gpu`: insist on a GPU and use mixed precision, as training does there."""
    import tensorflow as tf

    from cxr.device import configure_devices

    if gpu and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--gpu given but TensorFlow sees no GPU")
    return configure_devices(prefer_gpu=gpu, mixed_precision=gpu).model_dump()


def _isolate_state(home: Path) -> None:
    """A throwaway $CXR_HOME (Prefect, MLflow, Keras), set before anything imports Prefect or TF."""
    os.environ["CXR_HOME"] = str(home)
    for variable in _STATE_VARIABLES:
        os.environ.pop(variable, None)
    from cxr.state import configure_environment

    configure_environment()


def _print_table(report: dict[str, Any]) -> None:
    for key, row in report["goals"].items():
        print(f"{key:<28} {row['value']!s:>10}  goal {row['goal']:<8} {'met' if row['met'] else 'MISSED'}")
    for key, value in report["results"].items():
        if key not in report["goals"] and not isinstance(value, dict):
            print(f"{key:<28} {value}")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
