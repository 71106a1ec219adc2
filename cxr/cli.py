"""`cxr`: the command line. Each sub-command imports what it needs, after the environment is set."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr.state import configure_environment, state_dir

DEMO_SIZE = 256
# Commands whose Prefect runs and events go to the local dashboard when one is up.
RECORDED_COMMANDS = {"train", "predict", "serve", "watch"}


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, default=str, allow_nan=False, separators=(",", ":")))


def _use_dashboard_if_running() -> None:
    """Record runs in the local dashboard when one is up; else Prefect starts a temporary server."""
    import os

    if os.environ.get("PREFECT_API_URL"):
        return
    from cxr.server import api_url_if_running

    url = api_url_if_running()
    if url:
        os.environ["PREFECT_API_URL"] = url


def _demo_data_dir() -> Path:
    """The demo dataset in the state folder, generated on first use."""
    from cxr.demo_data import write_demo_dataset

    out = state_dir("demo-data") / "chest_xray"
    if not (out / "train").is_dir():
        write_demo_dataset(out, n=400, size=DEMO_SIZE, seed=0)
    return out


def cmd_demo_data(args: argparse.Namespace) -> int:
    from cxr.demo_data import write_demo_dataset

    counts = write_demo_dataset(Path(args.out), n=args.n, size=args.size, seed=args.seed)
    if args.json:
        _print_json({"out": str(Path(args.out).resolve()), "counts": counts})
    else:
        print(f"wrote synthetic dataset to {Path(args.out).resolve()}: {counts}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prefect import tags

    from cxr.config import RetrainConfig
    from cxr.errors import DataError, ModelError
    from flows.retrain import retrain

    data_dir = Path(args.data) if args.data else _demo_data_dir()
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    backbone_weights = Path(args.backbone_weights) if args.backbone_weights else None
    if backbone_weights is not None and not backbone_weights.is_file():
        raise ModelError(f"backbone weights file not found: {backbone_weights}")
    overrides = {
        "model": args.model,
        # Absolute, so the flow (maybe in a worker with another working folder) finds the same file.
        "backbone_weights": str(backbone_weights.resolve()) if backbone_weights else None,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
    }
    config = RetrainConfig(
        data_dir=str(data_dir.resolve()),
        keep_official_test=args.keep_official_test,
        trigger=args.trigger,
        **{key: value for key, value in overrides.items() if value is not None},
    )
    started = time.perf_counter()
    with tags(args.trigger):
        summary = retrain(config)
    summary["duration_s"] = round(time.perf_counter() - started, 2)
    if args.json:
        _print_json(summary)
    else:
        _print_training_summary(summary)
    return 0


def _print_training_summary(summary: dict[str, Any]) -> None:
    metrics = summary["metrics"]
    shown = ", ".join(
        f"{key} {metrics[key]:.3f}"
        for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
        if metrics.get(key) is not None
    )
    role = "champion" if summary["champion"] else "challenger (not promoted)"
    print(
        f"trained {summary['architecture']} on {summary['images']['accepted']} images in {summary['duration_s']} s"
    )
    print(f"test metrics: {shown}")
    print(
        f"registered {summary['model_uri']} as {role}; reused cached tasks: {summary['cached_tasks'] or 'none'}"
    )
    from cxr.state import cxr_home, default_tracking_uri

    print(f"registry: {default_tracking_uri()}; state folder: {cxr_home()}")
    print("see it: `cxr models`, `cxr mlflow-ui` (registry) and `cxr dashboard` (Prefect runs)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from tasks.ingest import ingest_folder

    data_dir = Path(args.data)
    out_dir = Path(args.out) if args.out else state_dir("manifests", "cli")
    result = ingest_folder(data_dir, out_dir, min_side=args.min_side)
    payload = result.model_dump(mode="json")
    if args.json:
        _print_json(payload)
    else:
        print(
            f"{result.files_found} files: {result.accepted} accepted, {result.quarantined} quarantined "
            f"{result.quarantined_by_reason}; per class {result.per_class}; manifest {result.manifest_path}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.scoring import evaluate_folder

    result = evaluate_folder(args.model, Path(args.data))
    if args.json:
        _print_json(result)
    else:
        metrics = result["metrics"]
        print(", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.predict import predict

    summary = predict(
        paths=list(args.paths),
        model_uri=args.model,
        out_csv=args.out,
        heatmaps_dir=args.heatmaps,
    )
    if args.json:
        _print_json(summary)
    else:
        print(f"scored {summary['scored']} files ({summary['failed']} failed) -> {summary['out_csv']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cxr.registry import list_versions
    from cxr.state import default_tracking_uri

    versions = list_versions(args.name, default_tracking_uri())
    if args.json:
        _print_json({"model_name": args.name, "versions": versions})
        return 0
    for row in versions:
        metrics = row.get("metrics", {})
        print(
            f"v{row['version']:<3} {','.join(row.get('aliases', [])) or '-':<10} "
            f"auc={metrics.get('auc')} acc={metrics.get('accuracy')} data={row.get('data_digest', '')[:12]} "
            f"created={row.get('created')}"
        )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from cxr.registry import promote
    from cxr.state import default_tracking_uri

    promote(args.name, int(args.version), args.reason, default_tracking_uri())
    print(f"{args.name} v{args.version} is now champion ({args.reason})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cxr.registry import rollback
    from cxr.state import default_tracking_uri

    version = rollback(args.name, args.reason, default_tracking_uri())
    print(f"{args.name} champion rolled back to v{version} ({args.reason})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from cxr.server import ensure_dashboard, stop_dashboard

    if args.stop:
        print("dashboard stopped" if stop_dashboard() else "no dashboard was running")
        return 0
    print(ensure_dashboard(port=args.port))
    return 0


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from cxr.server import mlflow_ui

    mlflow_ui(port=args.port)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve_deployments
    from flows.retrain import task_runner_from_env

    task_runner_from_env()  # served runs use it too: without prefect-dask, fail now rather than per run
    data_dir = str(Path(args.data).resolve()) if args.data else str(_demo_data_dir())
    serve_deployments(
        data_dir, cron=args.cron, timezone=args.timezone, debounce_s=args.debounce, event_roots=args.data_root
    )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from cxr.watch import watch_inbox

    emitted = watch_inbox(Path(args.inbox), settle_s=args.settle, poll_s=args.poll, once=args.once)
    print(f"emitted {emitted} cxr.data.arrived event(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cxr import REGISTERED_MODEL_NAME

    parser = argparse.ArgumentParser(
        prog="cxr", description="Chest X-ray pneumonia classifier retraining pipeline"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo-data", cmd_demo_data, "write a synthetic X-ray dataset in the Kaggle layout")
    demo.add_argument("out")
    demo.add_argument("--n", type=int, default=400, help="number of images")
    demo.add_argument("--size", type=int, default=DEMO_SIZE, help="image side in pixels")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true")

    train = command("train", cmd_train, "run the retrain flow (on the demo data when --data is not given)")
    train.add_argument(
        "--data", help="image folder (Kaggle layout, NORMAL/PNEUMONIA folders or flat named files)"
    )
    train.add_argument("--model", choices=["seed", "default", "mobilenet"])
    train.add_argument(
        "--backbone-weights",
        metavar="FILE",
        help="start the model's backbone from this weights file (.weights.h5; --model mobilenet only)",
    )
    train.add_argument("--image-size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--keep-official-test", action="store_true", help="use the folder's test/ split as test set"
    )
    train.add_argument("--trigger", choices=["manual", "nightly", "new-data"], default="manual")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    ingest = command("ingest", cmd_ingest, "check and index a folder of images (manifest + quarantine list)")
    ingest.add_argument("--data", required=True)
    ingest.add_argument("--out", help="folder for manifest.parquet and quarantine.csv")
    ingest.add_argument("--min-side", type=int, default=64)
    ingest.add_argument("--json", action="store_true")

    evaluate = command("evaluate", cmd_evaluate, "score a model on a labelled folder")
    evaluate.add_argument("--model", default=f"models:/{REGISTERED_MODEL_NAME}@champion")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--json", action="store_true")

    predict = command("predict", cmd_predict, "score images or folders with the champion model")
    predict.add_argument("paths", nargs="+")
    predict.add_argument("--model", default=f"models:/{REGISTERED_MODEL_NAME}@champion")
    predict.add_argument("--out", default="predictions.csv")
    predict.add_argument("--heatmaps", help="folder for Grad-CAM overlay PNGs")
    predict.add_argument("--json", action="store_true")

    models = command("models", cmd_models, "list registered model versions")
    models.add_argument("--name", default=REGISTERED_MODEL_NAME)
    models.add_argument("--json", action="store_true")

    promote = command("promote", cmd_promote, "make VERSION the champion")
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual promotion")
    promote.add_argument("--name", default=REGISTERED_MODEL_NAME)

    rollback = command("rollback", cmd_rollback, "move champion back to the previous champion")
    rollback.add_argument("--reason", default="manual rollback")
    rollback.add_argument("--name", default=REGISTERED_MODEL_NAME)

    dashboard = command("dashboard", cmd_dashboard, "start (or reuse) the local Prefect dashboard")
    dashboard.add_argument("--port", type=int, default=4200)
    dashboard.add_argument("--stop", action="store_true", help="stop the dashboard this state folder started")

    mlflow_ui = command("mlflow-ui", cmd_mlflow_ui, "open the MLflow registry UI on 127.0.0.1")
    mlflow_ui.add_argument("--port", type=int, default=5000)

    serve = command("serve", cmd_serve, "serve the nightly and on-new-data deployments")
    serve.add_argument("--data", help="data folder for the nightly run (default: demo data)")
    serve.add_argument("--cron", default="0 2 * * *")
    serve.add_argument(
        "--timezone", default=None, help="IANA zone of the cron (default $CXR_TIMEZONE or UTC)"
    )
    serve.add_argument(
        "--debounce", type=float, default=600.0, help="at most one on-new-data run per inbox per N s"
    )
    serve.add_argument(
        "--data-root",
        action="append",
        default=[],
        help="folder that event-named data folders must lie in (repeatable; default: the --data folder's parent)",
    )

    watch = command("watch", cmd_watch, "emit cxr.data.arrived when new files in INBOX have settled")
    watch.add_argument("inbox")
    watch.add_argument("--settle", type=float, default=30.0, help="seconds without changes before announcing")
    watch.add_argument("--poll", type=float, default=5.0)
    watch.add_argument("--once", action="store_true", help="exit after the first event")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from cxr.errors import CxrError

    try:
        configure_environment()
        if args.command in RECORDED_COMMANDS:
            _use_dashboard_if_running()  # before Prefect is imported: it reads its settings once
        return args.handler(args)
    except CxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, first["loc"]))
        print(f"error: invalid {where}: {message}" if where else f"error: {message}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"error: not found: {error.filename or error}", file=sys.stderr)
        return 2
    except OSError as error:  # environment trouble after the retries: disk, permissions, network
        print(
            f"error: {error.strerror or error}{f': {error.filename}' if error.filename else ''}",
            file=sys.stderr,
        )
        return 1
    except Exception as error:
        if type(error).__module__.startswith("mlflow"):  # registry still unavailable after the retries
            print(f"error: model registry: {str(error).splitlines()[0]}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
