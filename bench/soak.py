"""`python -m bench.soak --cycles N --json`: N retraining cycles on `cxr cluster`, one fault per cycle in turn.

The stack comes up once, in a fresh state folder below a mode-0700 parent, and goes down at the end (no port
may stay open). Before each cycle new images arrive in the data folder (a few demo images of new patients and
one unreadable file); then `cxr train` runs on the stack while one fault strikes, in this order:

- `dask_worker_killed`: the first Dask worker to start an ingest check SIGKILLs itself (`kill_once_ingest_check`
  planned on the workers at `up`; its nanny starts a new one)
- `prefect_restarted`: the Prefect server is stopped and started again (`cxr cluster up`) while `train` runs
- `mlflow_down`: the MLflow tracking server is stopped as `register` starts and comes back `MLFLOW_OUTAGE_S` later
- `postgres_restarted`: PostgreSQL is stopped and started again between two runs

A cycle whose run fails is run once more, without a fault (`recovered` when that completes). After each cycle:
every file of the data folder is in the latest manifest or its quarantine list, and a stock `MlflowClient` finds
one version per data digest and a champion alias that names an existing version. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.soak_stack import (
    PrefectApi,
    add_images,
    cxr,
    finish,
    images_lost,
    listening,
    new_soak_folder,
    registry_view,
    remove_soak_folder,
    start_cxr,
)
from cxr.data.demo_data import write_demo_dataset

FAULTS = ("dask_worker_killed", "prefect_restarted", "mlflow_down", "postgres_restarted")
KILL_A_WORKER = "kill_once_ingest_check:1"
TRAIN_PAUSE_S = 30  # `train` sleeps this long first (`pause_in_train`): the Prefect server restarts meanwhile
REGISTER_HANG_S = (
    15  # `register` waits this long first (`hang_registry`): time to see it start and stop MLflow
)
MLFLOW_OUTAGE_S = 30
WORKERS = 2


def _round(seconds: float) -> float:
    return round(seconds, 1)


class Soak:
    """One stack, one data folder, the cycles run on them."""

    def __init__(self, home: Path, data: Path, logs: Path, train_args: list[str], train_pause_s: int) -> None:
        self.home, self.data, self.logs, self.train_args = home, data, logs, train_args
        self.train_pause_s = train_pause_s
        self.status: dict = {}
        self.api: PrefectApi | None = None

    def up(self) -> float:
        """`cxr cluster up` with a worker-killing fault planned on the Dask workers (it fires once per marker)."""
        started = time.perf_counter()
        cxr(
            self.home,
            self.logs / "up",
            "cluster",
            "up",
            "--workers",
            str(WORKERS),
            "--json",
            faults=KILL_A_WORKER,
        )
        self.status = cxr(self.home, self.logs / "status", "cluster", "status", "--json")
        from cxr.ops import stack_security
        from cxr.ops.cluster import cluster_dir

        self.api = PrefectApi(
            self.status["prefect_api_url"], stack_security.prefect_auth_header(cluster_dir())
        )
        return time.perf_counter() - started

    def restart(self, service: str) -> float:
        """Stop one service; `up` (as `cxr cluster up` does) brings it back. Seconds until it answers."""
        from cxr.ops import cluster, postgres

        started = time.perf_counter()
        if service == "postgres":
            endpoints = cluster.read_endpoints()
            postgres.stop(
                postgres.Postgres(cluster.cluster_dir() / "postgres", endpoints["ports"]["postgres"])
            )
        else:
            cluster.stop_service(service)
        cluster.up(workers=WORKERS)
        return time.perf_counter() - started

    def run(self, name: str, fault: str | None) -> dict[str, Any]:
        """One `cxr train` with `fault` injected; what happened."""
        assert self.api is not None
        planned = {
            "prefect_restarted": f"pause_in_train:{self.train_pause_s}",
            "mlflow_down": f"hang_registry:{REGISTER_HANG_S}",
        }
        stage = {"prefect_restarted": "train", "mlflow_down": "register"}.get(fault or "")
        known = self.api.task_run_ids(stage) if stage else set()
        marker = self.home / "faults" / "kill_once_ingest_check"
        if fault == "dask_worker_killed":
            marker.unlink(missing_ok=True)  # the next ingest check on a worker kills it
        outcome: dict[str, Any] = {"fault": fault}
        if fault == "postgres_restarted":
            outcome["service_back_s"] = _round(self.restart("postgres"))
        started = time.perf_counter()
        log = self.logs / name
        process = start_cxr(self.home, log, "train", "--data", str(self.data), *self.train_args,
                            faults=planned.get(fault or "", ""))  # fmt: skip
        if stage:
            outcome["injected"] = self.api.wait_for_stage(stage, known, process)
            if outcome["injected"] and fault == "prefect_restarted":
                outcome["service_back_s"] = _round(self.restart("prefect-server"))
            elif outcome["injected"]:
                outcome["service_back_s"] = _round(self._mlflow_outage())
        status, summary, error = finish(process, log)
        if fault == "dask_worker_killed":
            outcome["injected"] = marker.exists()
        elif fault == "postgres_restarted":
            outcome["injected"] = True
        outcome["seconds"] = _round(time.perf_counter() - started)
        if status != 0 or summary is None:
            return {**outcome, "state": "FAILED", "error": error}
        state = self.api.flow_run_state(summary["flow_run_id"])
        return {**outcome, "state": state, "flow_run_id": summary["flow_run_id"],
                "data_digest": summary["data_digest"], "model_version": summary["model_version"]}  # fmt: skip

    def _mlflow_outage(self) -> float:
        from cxr.ops import cluster

        started = time.perf_counter()
        cluster.stop_service("mlflow-server")
        time.sleep(MLFLOW_OUTAGE_S)
        cluster.up(workers=WORKERS)
        return time.perf_counter() - started

    def cycle(self, index: int, fault: str, new_images: int, image_size: int) -> dict[str, Any]:
        add_images(self.data, index, new_images, image_size)
        first = self.run(f"cycle-{index}", fault)
        result: dict[str, Any] = {"cycle": index, **first, "outcome": "completed"}
        if first["state"] != "COMPLETED":
            from cxr.ops import cluster

            failed_at = time.perf_counter()
            cluster.up(workers=WORKERS)  # whatever the fault left down comes back, as an operator would do
            retry = self.run(f"cycle-{index}-retry", None)
            result["retry"] = retry
            result["outcome"] = "recovered" if retry["state"] == "COMPLETED" else "failed"
            result["recovery_s"] = _round(time.perf_counter() - failed_at)
            result["data_digest"] = retry.get("data_digest")
        result["images_lost"] = images_lost(self.home, self.data)
        result["registry"] = registry_view(self.status["mlflow_tracking_uri"], self.status["credentials"])
        return result


def soak(args: argparse.Namespace, faults: list[str]) -> dict[str, Any]:
    """Up, `args.cycles` cycles, down; the report."""
    cycles, new_images, image_size = args.cycles, args.new_images, args.image_size
    parent, home, data = new_soak_folder()
    os.environ["CXR_HOME"] = str(home)  # the in-process restarts (`cxr.ops.cluster`) act on this stack
    write_demo_dataset(data, n=args.images, size=image_size, seed=0)
    train_args = ["--model", args.model, "--image-size", str(image_size), "--epochs", str(args.epochs),
                  "--batch-size", "16", "--json"]  # fmt: skip
    stack = Soak(home, data, parent / "logs", train_args, args.train_pause)
    report: dict[str, Any] = {"cycles": cycles, "state_dir": str(home)}
    results: list[dict[str, Any]] = []
    try:
        report["up_s"] = _round(stack.up())
        ports = json.loads((home / "cluster" / "endpoints.json").read_text())["ports"]
        for index in range(cycles):
            results.append(stack.cycle(index, faults[index % len(faults)], new_images, image_size))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress, one line per cycle
    finally:
        started = time.perf_counter()
        report["down"] = cxr(home, parent / "logs" / "down", "cluster", "down", "--json")["stopped"]
        report["down_s"] = _round(time.perf_counter() - started)
        report["ports_left"] = listening(ports) if "up_s" in report else []
        if os.environ.get("CXR_SOAK_KEEP"):
            report["kept"] = str(parent)
        else:
            remove_soak_folder(parent, home)
    return {**report, **summarise(results)}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's keys (`completed`, `recovered`, `images_lost`, `versions`, `digests`) and the times."""
    digests = [result["data_digest"] for result in results if result.get("data_digest")]
    last = results[-1]["registry"] if results else {"versions": 0, "per_digest": {}}
    cycle_s = [result["seconds"] for result in results if result["outcome"] == "completed"]
    return {
        "completed": sum(result["outcome"] == "completed" for result in results),
        "recovered": sum(result["outcome"] == "recovered" for result in results),
        "failed": sum(result["outcome"] == "failed" for result in results),
        "images_lost": len({path for result in results for path in result["images_lost"]}),
        "versions": last["versions"],
        "digests": len(set(digests)),
        "one_version_per_digest": all(last["per_digest"].get(digest) == 1 for digest in digests),
        "champion_always_exists": all(result["registry"]["champion_exists"] for result in results),
        "faults_injected": sum(bool(result.get("injected")) for result in results),
        "cycle_s_median": _round(statistics.median(cycle_s)) if cycle_s else None,
        "recovery_s": [result["recovery_s"] for result in results if "recovery_s" in result],
        "service_back_s": {result["fault"]: result.get("service_back_s") for result in results},
        "per_cycle": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"in turn, comma-separated: {', '.join(FAULTS)}"
    )
    parser.add_argument("--images", type=int, default=80, help="demo images in the data folder at the start")
    parser.add_argument("--new-images", type=int, default=8, help="demo images arriving before each cycle")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="seed")
    parser.add_argument(
        "--train-pause", type=int, default=TRAIN_PAUSE_S,
        help=f"seconds `train` waits first in a prefect_restarted cycle (default {TRAIN_PAUSE_S}: the server "
        "restarts within them; less: it is down as training ends and the next stages report)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    if unknown := set(faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    report = soak(args, faults)
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    else:
        print(json.dumps({key: value for key, value in report.items() if key != "per_cycle"}, indent=2))
    ok = report["completed"] + report["recovered"] == args.cycles and not report["images_lost"]
    ok = (
        ok
        and report["one_version_per_digest"]
        and report["champion_always_exists"]
        and not report["ports_left"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
