"""Scale measure: `cxr train` on synthetic folders of growing size; time per image per stage, peak memory.

Per size N: a folder of N distinct synthetic X-rays, one `cxr train` (one epoch) and the same run
again, fully cached. Reported per N: ingest, shard-building and training images/s, the run's peak
resident memory and each task's (`peak_rss_mib_by_task` of `cxr train --json`), the cached rerun's
wall time; then how the largest N compares with the smallest.
Ingest is also timed alone (`cxr.data.ingesting.ingest_folder`, CPU seconds included), which tells its
own cost per image from the load of a shared machine:

    python -m bench.scale --ingest-only 2000 10000 40000 [--repeats 3] [--work DIR] [--json]

The memory part alone, without a bench server (each size in a fresh state folder, as an operator's
first run):

    python -m bench.scale --memory 2000 16000 [--image-size 224] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import DEMO_IMAGE_SIZE
from bench.orchestration import cxr_command
from bench.suite import Context

# Distinct demo images drawn per folder; the rest are shifted copies (drawing each costs ~0.1 s).
BASE_IMAGES = 200
SCALE_MODEL = "default"
# Task names start with their stage: ingest-plan, ingest-check, batches-shard, ...
STAGES = ("ingest", "batches", "train")


def measure_scale(context: Context) -> dict[str, Any]:
    """Each folder size of the preset (small, medium, large; 0: skipped), trained twice against the
    bench's Prefect server."""
    sizes = context.sizes
    counts = (sizes.scale_images_small, sizes.scale_images_medium, sizes.scale_images_large)
    runs = []
    for count in sorted(count for count in counts if count):
        data_dir = context.work / f"images-{count}" / "chest_xray"
        write_scaled_dataset(data_dir, count, seed=count)
        ingest = ingest_cost(data_dir, context.work / f"ingest-{count}", workers=context.workers)
        arguments = ["--image-size", str(sizes.scale_image_size), "--epochs", "1", "--model", SCALE_MODEL]
        first, first_s, peak_mib = train_measured(data_dir, arguments, api_url=context.api_url)
        rerun, rerun_s, _ = train_measured(data_dir, arguments, api_url=context.api_url)
        spans = stage_seconds(context.api_url, first["flow_run_id"])
        accepted = first["images"]["accepted"]
        train_images = first["split_counts"]["train"]
        runs.append(
            {
                "images": accepted,
                "ingest_img_s": round(accepted / spans["ingest"], 1),
                "shards_img_s": round(accepted / spans["batches"], 1),
                "train_img_s": first["train_images_per_second"],
                "train_images": sum(train_images.values()),
                "peak_rss_mib": peak_mib,
                "peak_rss_mib_by_task": first["peak_rss_mib_by_task"],
                "first_run_s": round(first_s, 1),
                "cached_rerun_s": round(rerun_s, 2),
                "cached_tasks": len(rerun["cached_tasks"]),
                "load_average_1m": round(os.getloadavg()[0], 2),
                **ingest,
            }
        )
    smallest, largest = runs[0], runs[-1]
    return {
        "scale_images_smallest": smallest["images"],
        "scale_images_largest": largest["images"],
        "scale_rss_growth": round(largest["peak_rss_mib"] / smallest["peak_rss_mib"], 3),
        "scale_time_per_image_spread": time_per_image_spread(runs),
        "scale_ingest_cpu_spread": cpu_per_image_spread(runs),
        "scale_cached_rerun_max_s": max(run["cached_rerun_s"] for run in runs),
        "scale_runs": runs,
        "scale_workload": {"model": SCALE_MODEL, "image_size": sizes.scale_image_size, "epochs": 1},
    }


def time_per_image_spread(runs: list[dict[str, Any]]) -> float:
    """Largest relative change of any stage's seconds per image, from the smallest N to any other."""
    keys = ("ingest_img_s", "shards_img_s", "train_img_s")
    base = runs[0]
    return round(
        max(abs(base[key] / run[key] - 1) for run in runs[1:] for key in keys) if runs[1:] else 0.0, 3
    )


def cpu_per_image_spread(runs: list[dict[str, Any]]) -> float:
    """Largest relative change of ingest's CPU milliseconds per image, from the smallest N to any other."""
    base = runs[0]["ingest_cpu_ms_per_image"]
    return round(max((abs(run["ingest_cpu_ms_per_image"] / base - 1) for run in runs[1:]), default=0.0), 3)


def ingest_cost(data_dir: Path, out_dir: Path, *, workers: int | None = None) -> dict[str, Any]:
    """One full ingest of `data_dir` in this process: images/s and CPU ms per image (its workers included)."""
    from bench.measures import with_cpu_time
    from cxr.data.imaging import MIN_IMAGE_SIDE
    from cxr.data.ingesting import ingest_folder

    result, wall_s, cpu_s = with_cpu_time(
        lambda: ingest_folder(data_dir, out_dir, min_side=MIN_IMAGE_SIDE, workers=workers)
    )
    return {
        "ingest_alone_img_s": round(result.files_found / wall_s, 1),
        "ingest_cpu_ms_per_image": round(1000 * cpu_s / result.files_found, 3),
    }


def write_scaled_dataset(out: Path, count: int, *, seed: int, base_images: int = BASE_IMAGES) -> None:
    """`count` distinct JPEGs under `out/train/{NORMAL,PNEUMONIA}`: demo images, each copy shifted sideways.

    A shift of k pixels (k = copy number) changes every file's bytes, so ingest keeps them all, and
    the file names give each image its own patient, as `cxr.data.demo_data` names them.
    """
    from PIL import Image

    from cxr.data.demo_data import write_demo_dataset

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as base:
        write_demo_dataset(Path(base), n=min(count, base_images), size=DEMO_IMAGE_SIZE, seed=seed)
        sources = sorted(Path(base).rglob("*.jpeg"))
        pixels = [np.asarray(Image.open(path).convert("L")) for path in sources]
        folders = [path.parent.name for path in sources]
    for folder in set(folders):
        (out / "train" / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source, copy = index % len(sources), index // len(sources)
        folder = folders[source]
        name = (
            f"person{index}_bacteria_{index}.jpeg" if folder == "PNEUMONIA" else f"IM-{index:06d}-0001.jpeg"
        )
        shifted = np.roll(pixels[source], copy, axis=1)
        Image.fromarray(shifted).save(out / "train" / folder / name, quality=90)


def train_measured(
    data_dir: Path, arguments: list[str], *, api_url: str | None = None, home: Path | None = None
) -> tuple[dict, float, float]:
    """`cxr train --data DIR ARGUMENTS --json` against the Prefect server at `api_url`, or (`home`) alone in
    that state folder: its JSON summary, wall seconds and peak RSS (MiB)."""
    command = [*cxr_command(), "train", "--data", str(data_dir), *arguments, "--json"]
    env = (
        state_folder_env(home)
        if home
        else {**os.environ, **({"PREFECT_API_URL": api_url} if api_url else {})}
    )
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # Reported by `cxr train` itself: the rusage of a child started from this (large) process would
    # include this process's own peak.
    return summary, wall_s, summary["peak_rss_mib"]


def state_folder_env(home: Path) -> dict[str, str]:
    """This environment for a `cxr` command on its own state folder `home` (its server, registry, caches)."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_", "CXR_"))
    }
    return {**env, "CXR_HOME": str(home)}


def stage_seconds(api_url: str | None, flow_run_id: str) -> dict[str, float]:
    """Wall seconds of each stage in STAGES: first start to last end of its task runs (mapped ones overlap)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: api_url} if api_url else {}
    task_runs: list = []
    with temporary_settings(updates=updates), get_client(sync_client=True) as client:
        # The server returns at most 200 task runs per call; a big folder's run has more.
        while page := client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=200,
            offset=len(task_runs),
        ):
            task_runs += page
    spans: dict[str, list] = {stage: [] for stage in STAGES}
    for run in task_runs:
        stage = run.name.split("-")[0]
        if stage in spans and run.start_time and run.end_time:
            spans[stage] += [run.start_time, run.end_time]
    missing = [stage for stage, times in spans.items() if not times]
    if missing:
        raise RuntimeError(f"flow run {flow_run_id} ran no task of stage(s) {missing}")
    return {stage: (max(times) - min(times)).total_seconds() for stage, times in spans.items()}


def scaled_folder(work: Path, count: int) -> Path:
    """The synthetic folder of `count` images under `work`, written on first use."""
    data_dir = work / f"images-{count}" / "chest_xray"
    if not data_dir.exists():
        write_scaled_dataset(data_dir, count, seed=count)
    return data_dir


def memory_by_size(counts: list[int], work: Path, image_size: int, *, echo: bool = False) -> dict[str, Any]:
    """Per folder size: `cxr train` (one epoch) in a fresh state folder, then the same run fully cached; the
    peak RSS of the run and of each task, the cached rerun's wall time; each peak's growth to the largest."""
    arguments = ["--image-size", str(image_size), "--epochs", "1", "--model", SCALE_MODEL]
    runs = []
    for count in sorted(counts):
        data_dir, home = scaled_folder(work, count), work / f"home-{count}"
        shutil.rmtree(home, ignore_errors=True)
        try:
            first, _, peak_mib = train_measured(data_dir, arguments, home=home)
            _, rerun_s, _ = train_measured(data_dir, arguments, home=home)
        finally:  # the state folder's Prefect server, which the first run started
            subprocess.run(
                [*cxr_command(), "dashboard", "--stop"],
                env=state_folder_env(home),
                capture_output=True,
                check=False,
            )
        runs.append(
            {
                "images": first["images"]["accepted"],
                "peak_rss_mib": peak_mib,
                "peak_rss_mib_by_task": first["peak_rss_mib_by_task"],
                "cached_rerun_s": round(rerun_s, 2),
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
        if echo:
            print(runs[-1], flush=True)
    smallest, largest = runs[0], runs[-1]
    return {
        "runs": runs,
        "workload": {"model": SCALE_MODEL, "image_size": image_size, "epochs": 1},
        "rss_growth": round(largest["peak_rss_mib"] / smallest["peak_rss_mib"], 3),
        "task_rss_growth": {
            task: round(largest["peak_rss_mib_by_task"][task] / peak, 3)
            for task, peak in smallest["peak_rss_mib_by_task"].items()
            if peak and largest["peak_rss_mib_by_task"].get(task)
        },
        "cached_rerun_max_s": max(run["cached_rerun_s"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    """Ingest alone (`--ingest-only`: the per-image cost without a training run) or `cxr train`'s memory
    (`--memory`: peak RSS per task and the cached rerun) on synthetic folders of the given sizes."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=main.__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ingest-only", type=int, nargs="+", metavar="N")
    mode.add_argument("--memory", type=int, nargs="+", metavar="N")
    parser.add_argument(
        "--work", type=Path, help="folder for the synthetic images (kept; default: temporary)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="ingests per size; the cheapest is kept")
    parser.add_argument("--image-size", type=int, default=224, help="--memory: the model's input size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        if args.memory:
            result = memory_by_size(args.memory, work, args.image_size, echo=not args.json)
            print(json.dumps(result) if args.json else f"peak RSS growth: {result['rss_growth']}")
            return 0
        runs = []
        for count in sorted(args.ingest_only):
            data_dir = scaled_folder(work, count)
            load = os.getloadavg()[0]
            # Other load only ever adds time, so the cheapest of the repeats is the ingest's own cost.
            costs = [ingest_cost(data_dir, work / "out") for _ in range(args.repeats)]
            cheapest = min(costs, key=lambda cost: cost["ingest_cpu_ms_per_image"])
            runs.append({"images": count, "load_average_1m": round(load, 2), **cheapest})
            if not args.json:
                print(runs[-1], flush=True)
    result = {"runs": runs, "ingest_cpu_spread": cpu_per_image_spread(runs)}
    print(json.dumps(result) if args.json else f"ingest CPU per image spread: {result['ingest_cpu_spread']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
