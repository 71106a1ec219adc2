"""The ingest measure (full and incremental ingest vs plain decoding), and what the machine is."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from bench.data import add_extra_files
from bench.suite import Context


def measure_ingest(context: Context) -> dict[str, Any]:
    """Full ingest vs plain single-process Pillow decoding of the same files; then a 1 % incremental ingest."""
    import pandas as pd

    from cxr.data.imaging import MIN_IMAGE_SIDE
    from cxr.data.ingesting import POOL_MIN_FILES, ingest_folder

    data, work, workers = context.data, context.work, context.workers
    full, full_s, full_cpu_s = with_cpu_time(
        lambda: ingest_folder(data.ingest_dir, work / "full", min_side=MIN_IMAGE_SIDE, workers=workers)
    )
    paths = pd.read_parquet(full.manifest_path, columns=["path"])["path"].tolist()
    decode_s = _plain_decode_seconds(paths)
    added = add_extra_files(data)
    incremental, incremental_s, _ = with_cpu_time(
        lambda: ingest_folder(
            data.ingest_dir,
            work / "incremental",
            min_side=MIN_IMAGE_SIDE,
            previous_manifest=Path(full.manifest_path),
            workers=workers,
        )
    )
    cores_used = workers if full.files_found >= POOL_MIN_FILES else 1
    ingest_rate = full.accepted / full_s
    decode_rate = len(paths) / decode_s
    return {
        "ingest_vs_decode": round(ingest_rate / decode_rate, 3),
        "ingest_cores_used": cores_used,
        "ingest_vs_decode_goal": round(0.8 * cores_used, 2),
        "ingest_cpu_utilisation": round(full_cpu_s / full_s, 2),
        "ingest_img_s": round(ingest_rate, 1),
        "plain_decode_img_s": round(decode_rate, 1),
        "ingest_full_s": round(full_s, 3),
        "ingest_files": full.files_found,
        "incremental_ingest_ratio": round(incremental_s / full_s, 4),
        "ingest_incremental_s": round(incremental_s, 3),
        "ingest_incremental_new_files": len(added),
        "ingest_incremental_reused": incremental.reused,
    }


def _plain_decode_seconds(paths: list[str]) -> float:
    """Single-process `Image.open().convert('L')` of every file at full size (the baseline decode)."""
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.convert("L")
    return time.perf_counter() - started


def with_cpu_time(function):
    """(result, wall s, CPU s of this process and of the worker processes it waited for)."""
    before = _cpu_seconds()
    started = time.perf_counter()
    result = function()
    wall_s = time.perf_counter() - started
    return result, wall_s, _cpu_seconds() - before


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": round(own / 1024, 1), "largest_child": round(children / 1024, 1)}


def machine() -> dict[str, Any]:
    """Cores, CPU model and load, so numbers from different machines are not compared blindly."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
