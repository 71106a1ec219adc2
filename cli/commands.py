"""The `cxr` sub-commands. Each imports what it needs when it runs, after the environment is set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cli.external_commands import external_options, print_external
from cli.output import print_json, show
from cxr.core.memory import peak_rss_mib
from cxr.core.state_folder import state_dir

DEMO_SIZE = 256


def _demo_data_dir() -> Path:
    """The demo dataset in the state folder, generated on first use."""
    from cxr.data.demo_data import write_demo_dataset

    out = state_dir("demo-data") / "chest_xray"
    if not (out / "train").is_dir():
        write_demo_dataset(out, n=400, size=DEMO_SIZE, seed=0)
    return out


def cmd_demo_data(args: argparse.Namespace) -> int:
    from cxr.data.demo_data import write_demo_dataset

    counts = write_demo_dataset(Path(args.out), n=args.n, size=args.size, seed=args.seed)
    if args.json:
        print_json({"out": str(Path(args.out).resolve()), "counts": counts})
    else:
        print(f"wrote synthetic dataset to {Path(args.out).resolve()}: {counts}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prefect import tags

    from cxr.config.params import RetrainConfig
    from cxr.core.errors import DataError, ModelError
    from flows.retrain import retrain

    data_dir = Path(args.data) if args.data else _demo_data_dir()
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    backbone_weights = Path(args.backbone_weights) if args.backbone_weights else None
    if backbone_weights is not None and not backbone_weights.is_file():
        raise ModelError(f"backbone weights file not found: {backbone_weights}")
    train = {
        "model": args.model,
        # Absolute, so the flow (maybe in a worker with another working folder) finds the same file.
        "backbone_weights": str(backbone_weights.resolve()) if backbone_weights else None,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "early_stopping_patience": args.early_stopping_patience,
    }
    split = {"seed": args.seed, "keep_official_test": args.keep_official_test}
    config = RetrainConfig(
        data_dir=str(data_dir.resolve()),
        split={key: value for key, value in split.items() if value is not None},
        train={key: value for key, value in train.items() if value is not None},
        trigger=args.trigger,
        **external_options(args),
    )
    if config.external.sets:
        from cxr.evaluation.external_sets import check_external_sets

        check_external_sets(config.external.sets, config.data_dir)  # before training: found in seconds
    started = time.perf_counter()
    with tags(args.trigger):
        summary = retrain(config)
    summary["duration_s"] = round(time.perf_counter() - started, 2)
    summary["peak_rss_mib"] = peak_rss_mib()
    return show(summary, args.json, _print_training_summary)


def _print_training_summary(summary: dict[str, Any]) -> None:
    metrics = summary["metrics"]
    shown = ", ".join(
        f"{key} {metrics[key]:.3f}"
        for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
        if metrics.get(key) is not None
    )
    role = "champion" if summary["champion"] else "challenger (not promoted)"
    reused = summary.get("reused", {})
    if "train" in reused:
        made = reused["train"] or "in an earlier run"
        print(
            f"reused the {summary['architecture']} model trained {made}: nothing was trained "
            f"(run took {summary['duration_s']} s)"
        )
    else:
        print(
            f"trained {summary['architecture']} on {summary['images']['accepted']} images, "
            f"{summary['epochs_run']} epochs (run took {summary['duration_s']} s)"
        )
    print(f"test metrics: {shown}")
    print_external(summary.get("external") or {})
    earlier = " (registered by an earlier run)" if "register" in reused else ""
    print(f"model {summary['model_uri']}: {role}{earlier}")
    if reused:
        made = sorted(moment for moment in reused.values() if moment)
        when = f" (made {made[0]} to {made[-1]})" if made else ""
        print(f"reused {len(reused)} cached results{when}: {', '.join(reused)}")
    from cxr.core.state_folder import cxr_home, default_tracking_uri

    print(f"registry: {default_tracking_uri()}; state folder: {cxr_home()}")
    print("see it: `cxr models`, `cxr mlflow-ui` (registry) and `cxr dashboard` (Prefect runs)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from cxr.data.ingesting import ingest_folder

    data_dir = Path(args.data)
    out_dir = Path(args.out) if args.out else state_dir("manifests", "cli")
    result = ingest_folder(data_dir, out_dir, min_side=args.min_side)
    payload = result.model_dump(mode="json")
    if args.json:
        print_json(payload)
    else:
        print(
            f"{result.files_found} files: {result.accepted} accepted, {result.quarantined} quarantined "
            f"{result.quarantined_by_reason}; per class {result.per_class}; manifest {result.manifest_path}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.evaluation.evaluate_folder import evaluate_folder
    from cxr.evaluation.risk_coverage import answered_line

    result = evaluate_folder(args.model, Path(args.data), operating_point=args.operating_point)
    if args.json:
        print_json(result)
    else:
        metrics = result["metrics"]
        print(f"operating point {result['operating_point']}: ", end="")
        print(", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
        print("decisions: " + ", ".join(f"{name} {n}" for name, n in result["decisions"].items()))
        if result.get("answered_alone"):  # in domain and outside the referral band
            print(answered_line(result["answered_alone"]))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.predict import predict

    summary = predict(
        paths=list(args.paths),
        model_uri=args.model,
        out_csv=args.out,
        heatmaps_dir=args.heatmaps,
        operating_point=args.operating_point,
    )
    if args.json:
        print_json(summary)
    else:
        print(f"scored {summary['scored']} files ({summary['failed']} failed) -> {summary['out_csv']}")
        print("decisions: " + ", ".join(f"{name} {n}" for name, n in summary["by_decision"].items()))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from cxr.ops.server import ensure_dashboard, stop_dashboard

    if args.stop:
        print("dashboard stopped" if stop_dashboard() else "no dashboard was running")
        return 0
    print(ensure_dashboard(port=args.port))
    return 0


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from cxr.ops.server import mlflow_ui

    mlflow_ui(port=args.port)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cxr.config.params import ExternalParams
    from deployments.serve import ServeOptions, serve_deployments
    from flows.retrain import task_runner_from_env

    task_runner_from_env()  # served runs use it too: without prefect-dask, fail now rather than per run
    data_dir = str(Path(args.data).resolve()) if args.data else str(_demo_data_dir())
    if args.notify_webhook or args.notify_block:
        from cxr.ops.notify import configure_notifications, masked_url

        names = configure_notifications(webhook_url=args.notify_webhook, block_slug=args.notify_block)
        target = args.notify_block or masked_url(args.notify_webhook)
        print(f"notifications ({', '.join(names)}) -> {target}", flush=True)
    overrides = {"external": {"sets": args.external}} if args.external else {}
    if args.external:
        from cxr.evaluation.external_sets import check_external_sets

        check_external_sets(ExternalParams(sets=args.external).sets, data_dir)  # else every run fails on it
    options = ServeOptions(
        cron=args.cron,
        timezone=args.timezone,
        debounce_s=args.debounce,
        event_roots=args.data_root,
        config_overrides=overrides,
        review_every_s=args.review_every,
        review_into=str(Path(args.review_into).resolve()) if args.review_into else None,
    )
    serve_deployments(data_dir, options)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from cxr.ops.status import gather_status

    return show(gather_status(args.name), args.json, _print_status)


def _print_status(status: dict[str, Any]) -> None:
    champion = status["champion"]
    if champion:
        metrics = champion["metrics"]
        shown = " ".join(
            f"{key} {metrics[key]:.3f}" for key in ("auc", "sensitivity", "specificity") if key in metrics
        )
        print(f"champion   {champion['model_uri']} ({champion['architecture']}): {shown}")
        change = champion.get("last_change")
        if change:
            run = f" in run {change['flow_run']}" if change.get("flow_run") else ""
            print(f"           since {change['at']} by {change['action']}{run}: {change['reason']}")
        else:
            print(f"           promoted {champion['promoted_at']}: {champion['reason']}")
    else:
        print("champion   none")
    if status["recent_runs"] is not None:
        print("recent runs" if status["recent_runs"] else "recent runs: none")
        for run in status["recent_runs"]:
            took = "-" if run["duration_s"] is None else f"{run['duration_s']:.0f} s"
            print(f"  {run['name']:<32} {run['state']:<10} {run['trigger']:<9} {took:>7}  {run['started']}")
    scheduled = status["next_scheduled"]
    if scheduled:
        print(f"next run   {scheduled['name']} ({scheduled['deployment']}) at {scheduled['at']}")
    print(f"dashboard  {status['dashboard_url'] or 'not running'}")
    local = status["local_server"]
    if local:
        answers = "up" if local["up"] else "not answering"
        print(
            f"server     local Prefect server {answers}, pid {local['pid']}, {local['url']} (log: {local['log']})"
        )
    else:
        print("server     no local Prefect server running")
    serving = status["serving"]
    if serving is not None:
        polled = ", ".join(
            f"{row['deployment']} {'up' if row['up'] else 'down'}" for row in serving["deployments"]
        )
        print(f"serving    {'yes' if serving['up'] else 'no'}" + (f" ({polled})" if polled else ""))
    for inbox in status["inboxes"]:
        waiting = "missing" if inbox["waiting_files"] is None else f"{inbox['waiting_files']} file(s) waiting"
        print(f"inbox      {inbox['path']}: {waiting}")
    for note in status["notes"]:
        print(f"note: {note}")


def cmd_watch(args: argparse.Namespace) -> int:
    from cxr.ops.watch import watch_inbox

    emitted = watch_inbox(
        Path(args.inbox), settle_s=args.settle, poll_s=args.poll, debounce_s=args.debounce, once=args.once
    )
    print(f"emitted {emitted} cxr.data.arrived event(s)")
    return 0
