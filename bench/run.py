"""`python -m bench`: run the measures and print/write one JSON object.

Only the standard library is imported at module level: ingest's worker processes re-import the
main module, and the state folder must be set before Prefect or TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench.sizes import PRESETS, Sizes
from bench.suite import GOALS, MEASURES, Context, selection

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
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="sizes: tiny (every measure in about a minute, for CI), quick (minutes), full (default)",
    )
    parser.add_argument("--quick", action="store_const", dest="preset", const="quick", help="--preset quick")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--data",
        type=Path,
        help="image folder to sample from (default: ../shared/data/kaggle_train_224 when present, else "
        "synthetic demo data)",
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="use synthetic demo data even when real is there"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--gpu", action="store_true", help="require a GPU and train in mixed precision")
    names = [measure.name for measure in MEASURES]
    parser.add_argument(
        "--only", help=f"comma-separated subset of {','.join(names)} (with the measures they need)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (printed on stderr)")
    for field in dataclasses.fields(Sizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, help="override the preset's value")
    args = parser.parse_args(argv)
    wanted = args.only.split(",") if args.only else names
    unknown = set(wanted) - set(names)
    if unknown:
        parser.error(f"unknown measure(s) {sorted(unknown)}; choose from {','.join(names)}")
    if args.data and args.synthetic:
        parser.error("--data and --synthetic exclude each other")
    args.measures = selection(wanted)
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
    """Run the selected measures in MEASURES order (one Prefect server for all) and assemble the report."""
    from bench.data import default_source, prepare_data
    from bench.measures import machine, peak_memory_mib

    started = time.perf_counter()
    load_before = machine()["load_average_1m"]
    sizes = _sizes(args, PRESETS[args.preset])
    names = {measure.name for measure in args.measures}
    folders = set().union(*(measure.folders for measure in args.measures))
    source = None if args.synthetic else args.data or default_source()
    data = prepare_data(
        work / "data",
        source=source,
        ingest_images=sizes.ingest_images if "ingest" in folders else 0,
        train_images=sizes.train_images if "train" in folders else 0,
        rerun_images=sizes.rerun_images if "rerun" in folders else 0,
    )
    with contextlib.ExitStack() as stack:
        api_url = None
        if any(measure.server for measure in args.measures):
            from cxr.ops.server import temporary_prefect_server

            # Set before Prefect is imported here, and inherited by `cxr` and Dask worker processes.
            api_url = stack.enter_context(temporary_prefect_server(work / "prefect-server"))
            os.environ["PREFECT_API_URL"] = api_url
        trains_here = names & {"pipelines", "default", "flops", "predict"}
        device = _configure_device(args.gpu) if trains_here or args.gpu else None
        context = Context(data, work, sizes, workers=os.cpu_count() or 1, api_url=api_url)
        for measure in args.measures:
            _log(f"measuring {measure.name} ...")
            measure_started = time.perf_counter()
            context.work = work / measure.name
            context.results.update(measure.run(context))
            _log(f"{measure.name} done in {time.perf_counter() - measure_started:.1f} s")
    results = context.results
    return {
        "results": results,
        "goals": goal_table(results),
        "measures": [measure.name for measure in args.measures],
        "peak_memory_mib": peak_memory_mib(),
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "device": device,
        "data_source": data.source,
        "preset": args.preset,
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

    from cxr.model.device import configure_devices

    if gpu and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--gpu given but TensorFlow sees no GPU")
    return configure_devices(prefer_gpu=gpu, mixed_precision=gpu).model_dump()


def _isolate_state(home: Path) -> None:
    """A throwaway $CXR_HOME (Prefect, MLflow, Keras), set before anything imports Prefect or TF."""
    os.environ["CXR_HOME"] = str(home)
    for variable in _STATE_VARIABLES:
        os.environ.pop(variable, None)
    from cxr.core.state_folder import configure_environment

    configure_environment()


def _print_table(report: dict[str, Any]) -> None:
    for key, row in report["goals"].items():
        print(f"{key:<28} {row['value']!s:>10}  goal {row['goal']:<8} {'met' if row['met'] else 'MISSED'}")
    for key, value in report["results"].items():
        if key not in report["goals"] and not isinstance(value, dict):
            print(f"{key:<28} {value}")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
