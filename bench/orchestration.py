"""Orchestration measure: `cxr train` subprocesses on a warm server, task/flow run times from its API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.suite import Context
from cxr import REGISTERED_MODEL_NAME
from cxr.ops.prefect_api import SERVER_ENV

# What the first `cxr train` of the orchestration measure registers (and promotes: the registry is new).
CHAMPION = f"models:/{REGISTERED_MODEL_NAME}@champion"
HEAVY_LIBRARIES = ("tensorflow", "keras", "sklearn", "mlflow", "matplotlib")
RERUN_MODEL = "default"


def measure_orchestration(context: Context) -> dict[str, Any]:
    """Two identical `cxr train` runs against one warm Prefect server: rerun time and flow overhead.

    Runs as a user runs a retrain: the default model on the bench's real (else synthetic) X-rays, a
    server already up. A third, cached run is profiled with `-X importtime` to show what its start-up
    pays for. The first run registers the champion that the predict and shift measures use.
    """
    sizes, data_dir, api_url = context.sizes, context.data.rerun_dir, context.api_url
    kwargs = {
        "api_url": api_url,
        "image_size": sizes.rerun_image_size,
        "epochs": sizes.rerun_epochs,
        "model": RERUN_MODEL,
    }
    first, first_s, _ = cxr_train(data_dir, **kwargs)
    second, second_s, _ = cxr_train(data_dir, **kwargs)
    _, _, importtime = cxr_train(data_dir, **kwargs, profile_imports=True)
    first_times = run_times(api_url, first["flow_run_id"])
    second_times = run_times(api_url, second["flow_run_id"])
    return {
        "rerun_images": sizes.rerun_images,
        "rerun_workload": {
            "model": RERUN_MODEL,
            "image_size": sizes.rerun_image_size,
            "epochs": sizes.rerun_epochs,
        },
        "cached_rerun_ratio": round(second_s / first_s, 4),
        "cached_rerun_in_process_ratio": round(second["duration_s"] / first["duration_s"], 4),
        "train_first_wall_s": round(first_s, 2),
        "train_rerun_wall_s": round(second_s, 2),
        "train_first_duration_s": first["duration_s"],
        "train_rerun_duration_s": second["duration_s"],
        # Python start-up plus the imports of `cxr train`: no rerun can be faster than this.
        "train_import_floor_s": round(import_seconds(), 2),
        "rerun_cached_tasks": second["cached_tasks"],
        # Where a cached rerun's start-up goes: the costliest top-level imports, and heavy libraries loaded.
        "rerun_import_profile": import_profile(importtime),
        # A task that reran shows why the rerun was slow (e.g. its code changed between the runs).
        "rerun_uncached_tasks": [
            name.rsplit("-", 1)[0]
            for name, run in second_times["task_runs"].items()
            if run["state"] != "Cached"
        ],
        "orchestration_overhead_s": first_times["overhead_s"],
        "orchestration_overhead_cached_s": second_times["overhead_s"],
        "flow_runs": {"first": first_times, "rerun": second_times},
    }


def cxr_train(
    data_dir: Path,
    *,
    api_url: str | None,
    image_size: int,
    epochs: int,
    model: str,
    profile_imports: bool = False,
) -> tuple[dict, float, str]:
    """Run `cxr train ... --json` as a subprocess against `api_url` (None: the one it chooses, as a user's).

    Returns its JSON summary, its wall seconds and its stderr (with `profile_imports`, Python's
    `-X importtime` report).
    """
    command = [
        *cxr_command(),
        "train",
        "--data",
        str(data_dir),
        "--image-size",
        str(image_size),
        "--epochs",
        str(epochs),
        "--model",
        model,
        "--json",
    ]
    started = time.perf_counter()
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", SERVER_ENV)}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if profile_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall_s = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), wall_s, completed.stderr


def import_profile(importtime: str, top: int = 8) -> dict[str, Any]:
    """The costliest top-level imports (cumulative seconds) in a `-X importtime` report, and which
    heavy libraries were imported at all."""
    top_level: dict[str, float] = {}
    imported: set[str] = set()
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|")
        if not cumulative.strip().isdigit():
            continue  # the header line
        imported.add(name.strip().split(".")[0])
        if not name[1:].startswith(" "):  # nested imports are indented under their importer
            top_level[name.strip()] = int(cumulative) / 1e6
    costliest = sorted(top_level.items(), key=lambda item: item[1], reverse=True)[:top]
    return {
        "top_level_s": {name: round(seconds, 3) for name, seconds in costliest},
        "heavy_libraries_imported": sorted(imported & set(HEAVY_LIBRARIES)),
    }


def import_seconds(modules: tuple[str, ...] = ("cli.main", "flows.retrain")) -> float:
    """Wall time of a fresh interpreter importing `modules`: the floor under any `cxr train` run."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], check=True, capture_output=True)
    return time.perf_counter() - started


def run_times(api_url: str, flow_run_id: str) -> dict[str, Any]:
    """The flow run's wall time and each of its task runs' own running time, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    tasks = {run.name: _seconds(run.start_time, run.end_time) for run in task_runs}
    flow_s = _seconds(flow_run.start_time, flow_run.end_time)
    busy_s = _covered_seconds([(run.start_time, run.end_time) for run in task_runs])
    return {
        "flow_s": round(flow_s, 3),
        "tasks_s": round(sum(tasks.values()), 3),
        # Mapped tasks run side by side: the overhead is the flow time during which no task ran.
        "overhead_s": round(flow_s - busy_s, 3),
        "task_runs": {
            run.name: {"s": round(tasks[run.name], 3), "state": run.state_name}
            for run in sorted(task_runs, key=lambda run: run.expected_start_time or run.created)
        },
    }


def _seconds(start, end) -> float:
    """Duration of a run; a task that never ran (a cache hit) has no start time and counts as 0 s."""
    if start is None or end is None:
        return 0.0
    return (end - start).total_seconds()


def _covered_seconds(intervals: list[tuple[Any, Any]]) -> float:
    """Length of the union of (start, end) datetime intervals; runs without a start are skipped."""
    total, reach = 0.0, None
    for start, end in sorted((start, end) for start, end in intervals if start and end):
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def cxr_command() -> list[str]:
    """The `cxr` console script next to this interpreter."""
    script = Path(sys.executable).parent / "cxr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
