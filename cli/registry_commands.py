"""`cxr models`, `promote` and `rollback`: the registered versions and the champion alias."""

from __future__ import annotations

import argparse

from cli.output import print_json


def cmd_models(args: argparse.Namespace) -> int:
    from cxr.core.mlflow_store import store_exists
    from cxr.core.state_folder import default_tracking_uri
    from cxr.registry.versions import list_versions, registered_model_names

    tracking_uri = default_tracking_uri()
    exists = store_exists(tracking_uri)  # listing a missing sqlite store would create an empty one
    versions = list_versions(args.name, tracking_uri) if exists else []
    if args.json:
        print_json(
            {
                "model_name": args.name,
                "versions": versions,
                "tracking_uri": tracking_uri,
                "registry_exists": exists,
            }
        )
        return 0
    if not exists:
        print(f"no MLflow registry at {tracking_uri} (nothing registered yet; `cxr train` creates it)")
    elif not versions:
        others = registered_model_names(tracking_uri)
        held = f"it holds {', '.join(others)}" if others else "it holds no registered models"
        print(f"no versions of {args.name} in the registry at {tracking_uri}; {held}")
    for row in versions:
        metrics = row.get("metrics", {})
        print(
            f"v{row['version']:<3} {','.join(row.get('aliases', [])) or '-':<10} "
            f"auc={metrics.get('auc')} acc={metrics.get('accuracy')} data={row.get('data_digest', '')[:12]} "
            f"created={row.get('created')}"
        )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from cxr.core.state_folder import default_tracking_uri
    from cxr.registry.versions import promote

    promote(args.name, int(args.version), args.reason, default_tracking_uri())
    print(f"{args.name} v{args.version} is now champion ({args.reason})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cxr.core.state_folder import default_tracking_uri
    from cxr.registry.versions import rollback

    version = rollback(args.name, args.reason, default_tracking_uri())
    print(f"{args.name} champion rolled back to v{version} ({args.reason})")
    return 0
