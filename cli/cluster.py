"""`cxr cluster up | down | status`: the PostgreSQL-backed Prefect server, Dask cluster and MLflow server."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cli.output import print_json

CLUSTER_HELP = "start, stop or show this machine's stack: PostgreSQL, Prefect server and worker, Dask, MLflow"


def add_cluster(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `cluster` through the parser's `command(name, handler, help)` helper."""
    cluster = command("cluster", cmd_cluster, CLUSTER_HELP)
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument("--workers", type=int, default=2, help="Dask worker processes (up; default 2)")
    cluster.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def cmd_cluster(args: argparse.Namespace) -> int:
    from cxr.core.errors import CxrError
    from cxr.ops import cluster

    if args.workers < 1:
        raise CxrError("--workers must be at least 1")
    if args.action == "up":
        result = cluster.up(workers=args.workers)
    elif args.action == "down":
        result = cluster.down()
    else:
        result = cluster.status()
    if args.json:
        print_json(result)
    else:
        _print(result)
    return 0 if args.action != "status" or result["up"] else 1


def _print(result: dict[str, Any]) -> None:
    if "stopped" in result:
        print(f"stopped: {', '.join(result['stopped']) or 'nothing was running'}")
        return
    print("cluster: " + ("up" if result["up"] else "down or incomplete"))
    for key, value in result.items():
        if key == "credentials":  # the files that hold them, never the secrets
            print("  credentials:")
            for name, path in value.items():
                print(f"    {name}: {path}")
        elif key != "up":
            print(f"  {key}: {value if value not in (None, 0) else '-'}")
