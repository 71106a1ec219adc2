"""Scale-out measure: the flow's mapped ingest checks on a 2-worker Dask `LocalCluster` vs the thread pool."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from bench.suite import Context
from cxr.data.imaging import MIN_IMAGE_SIDE
from cxr.data.ingest_plans import read_checks, store_plan
from cxr.data.ingesting import assemble_manifest, plan_folder
from tasks.ingest import check_chunks

DASK_WORKERS = 2


def measure_scaleout(context: Context) -> dict[str, Any]:
    """Wall time of `check_chunks` mapped over the same folder's chunks, a chunk per run (as `retrain` maps
    them on Dask), on the local thread pool and on a `DaskTaskRunner` at a running cluster's address (as
    $CXR_DASK_ADDRESS gives it); best of `repeats` alternating runs, every chunk recomputed (no cache hits).
    """
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.retrain import local_task_runner

    folder = context.data.ingest_dir
    started = time.perf_counter()
    with LocalCluster(
        n_workers=DASK_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        start_s = time.perf_counter() - started
        runners = {
            "threads": local_task_runner,
            "dask": lambda: DaskTaskRunner(address=cluster.scheduler_address),
        }
        best = dict.fromkeys(runners, float("inf"))
        for round_ in range(context.sizes.repeats):
            for name, runner in runners.items():
                out_dir = context.work / f"{name}-{round_}"
                started = time.perf_counter()
                accepted = mapped_ingest.with_options(task_runner=runner())(str(folder), str(out_dir))
                best[name] = min(best[name], time.perf_counter() - started)
    return {
        "dask_vs_threads": round(best["threads"] / best["dask"], 3),
        "ingest_threads_s": round(best["threads"], 3),
        "ingest_dask_s": round(best["dask"], 3),
        "dask_cluster_start_s": round(start_s, 2),
        "scaleout_files": accepted,
        "dask_workers": DASK_WORKERS,
    }


@flow(name="bench-mapped-ingest", persist_result=False)
def mapped_ingest(data_dir: str, out_dir: str) -> int:
    """plan -> `check_chunks` mapped on the flow's runner, a chunk per run -> assemble; the number of accepted
    files."""
    plan = store_plan(
        plan_folder(Path(data_dir), Path(out_dir), min_side=MIN_IMAGE_SIDE), Path(out_dir) / "plan"
    )
    futures = check_chunks.with_options(refresh_cache=True).map([[chunk] for chunk in plan.chunks()])
    checks = read_checks([check for future in futures for check in future.result()])
    return assemble_manifest(plan.load(), checks).accepted
