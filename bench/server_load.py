"""Orchestration load on the Prefect server: many mapped task runs at once, SQLite server vs PostgreSQL server.

    python -m bench.server_load [--tasks 400] [--threads 64]

One flow maps a trivial cached task over `--tasks` inputs on a thread pool of `--threads` (what a cached rerun of
a large archive with ingest's chunk cap lifted sends the server: hundreds of task runs at once, each a few API
calls). It runs twice per server, first computing, then all cached, against a temporary `prefect server start`
on SQLite and against the PostgreSQL-backed server of `cxr cluster up` in a temporary state folder. Reported per
run: seconds, task runs per second, and how often the client was told to back off (HTTP 503/429 answers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, logging, sys, time
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.task_runners import ThreadPoolTaskRunner

tasks, threads = int(sys.argv[1]), int(sys.argv[2])
backoffs = []
class Count(logging.Handler):
    def emit(self, record):
        if "retryable status code" in record.getMessage():
            backoffs.append(record.getMessage())
logging.getLogger("prefect").addHandler(Count())

@task(cache_policy=INPUTS, persist_result=True)
def touch(i: int) -> int:
    return i

@flow(task_runner=ThreadPoolTaskRunner(max_workers=threads), log_prints=False)
def fan_out(n: int) -> int:
    return sum(future.result() for future in touch.map(range(n)))

started = time.perf_counter()
fan_out(tasks)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": round(seconds, 2), "task_runs_per_s": round(tasks / seconds, 1),
                  "backoffs": len(backoffs)}))
"""


def _run(api_url: str, storage: Path, tasks: int, threads: int, auth: dict[str, str]) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        auth,
        PREFECT_API_URL=api_url,
        PREFECT_LOCAL_STORAGE_PATH=str(storage),
        PREFECT_HOME=str(storage.parent / "client-home"),
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tasks), str(threads)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:  # the run failed under the load: say why
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "Exception" in line]
        return {"failed": (errors or [f"exit status {done.returncode}"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _both_runs(
    api_url: str, work: Path, tasks: int, threads: int, auth: dict[str, str] | None = None
) -> dict:
    """A computing run then a cached one; `auth`: the client's PREFECT_API_AUTH_STRING where the server asks."""
    storage = work / "results"
    return {
        "first": _run(api_url, storage, tasks, threads, auth or {}),
        "cached": _run(api_url, storage, tasks, threads, auth or {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    from cxr.ops import cluster, stack_security
    from cxr.ops.server import temporary_prefect_server

    work = Path(tempfile.mkdtemp(prefix="cxr-server-load-", dir="/tmp"))
    work.chmod(
        0o755
    )  # as root, PostgreSQL's data then stays inside it (not beside ~postgres) and goes with it
    report = {"tasks": args.tasks, "threads": args.threads}
    with temporary_prefect_server(work / "sqlite-server") as api_url:
        report["sqlite"] = _both_runs(api_url, work / "sqlite", args.tasks, args.threads)
    os.environ["CXR_HOME"] = str(work / "cluster-home")
    stack = cluster.up(workers=1)
    try:
        auth = stack_security.client_env(cluster.cluster_dir())["PREFECT_API_AUTH_STRING"]
        report["postgresql"] = _both_runs(
            stack["prefect_api_url"], work / "pg", args.tasks, args.threads, {"PREFECT_API_AUTH_STRING": auth}
        )
    finally:
        cluster.down()
    if '"failed"' in json.dumps(report):  # keep the servers' logs (cluster-home/cluster/logs) to read why
        print(f"a run failed: logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
