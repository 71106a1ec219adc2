"""`cxr`: the command line's parser and entry point; the sub-commands are in `cli.commands`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from cli.cluster import add_cluster
from cli.commands import (
    DEMO_SIZE,
    cmd_dashboard,
    cmd_demo_data,
    cmd_evaluate,
    cmd_ingest,
    cmd_mlflow_ui,
    cmd_predict,
    cmd_serve,
    cmd_status,
    cmd_train,
    cmd_watch,
)
from cli.examples import START, epilog
from cli.external_commands import cmd_calibrate
from cli.registry_commands import cmd_models, cmd_promote, cmd_rollback
from cli.review import add_review
from cxr.core.native_logs import set_verbose
from cxr.core.progress import enable_terminal_progress
from cxr.core.state_folder import configure_environment
from cxr.ops.cluster import use_stack_if_up
from cxr.ops.watch import DEFAULT_DEBOUNCE_S

NOTIFY_WEBHOOK_ENV = "CXR_NOTIFY_WEBHOOK"

OPERATING_POINT_HELP = (
    "a named operating point of the model (its model.json `operating_points`); default: its default"
)
# Commands that record Prefect runs or events: they use the state folder's server, starting it if needed
# (cxr.ops.prefect_api). promote/rollback announce the champion change there (notifications).
RECORDED_COMMANDS = {"train", "predict", "serve", "watch", "promote", "rollback", "calibrate"}


def add_external_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a labelled folder from elsewhere, scored with the challenger and the champion in every run and "
        "gated on (repeatable; never trained on)",
    )


def build_parser() -> argparse.ArgumentParser:
    from cxr import REGISTERED_MODEL_NAME
    from cxr.config.architectures import MODEL_NAMES

    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Chest X-ray pneumonia classifier: retrain, gate, register and serve it (Prefect + MLflow)",
        epilog=START,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's native log lines (same as CXR_LOG_LEVEL=DEBUG)",
    )

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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
    train.add_argument("--model", choices=MODEL_NAMES)
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
        "--early-stopping-patience",
        type=int,
        metavar="EPOCHS",
        help="stop after this many epochs without a better validation AUC; 0: run every epoch (default: the model's)",
    )
    train.add_argument(
        "--keep-official-test", action="store_true", help="use the folder's test/ split as test set"
    )
    add_external_arguments(train)
    train.add_argument(
        "--calibrate-on",
        metavar="NAME",
        help="make external set NAME's `NAME:sensitivity-0.95` point the registered model's default",
    )
    train.add_argument(
        "--external-auc-margin",
        type=float,
        metavar="AUC",
        help="refuse a challenger whose AUC on an external set is more than this below the champion's (default 0.01)",
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
    evaluate.add_argument("--operating-point", help=OPERATING_POINT_HELP)
    evaluate.add_argument("--json", action="store_true")

    calibrate = command(
        "calibrate", cmd_calibrate, "add a site's operating points (SITE:...) to a registered model version"
    )
    calibrate.add_argument("--data", required=True, help="the site's labelled images (any layout)")
    calibrate.add_argument("--name", required=True, metavar="SITE", help="site name: the points' prefix")
    calibrate.add_argument(
        "--model",
        default=f"models:/{REGISTERED_MODEL_NAME}@champion",
        help="the registered version to calibrate (models:/NAME/N or models:/NAME@ALIAS)",
    )
    calibrate.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.95,
        metavar="T",
        help="SITE:sensitivity-T: the best specificity with at least this sensitivity on the site's images",
    )
    calibrate.add_argument(
        "--make-default",
        action="store_true",
        help="make SITE:sensitivity-T the new version's default point, with a referral band refitted around "
        "it on the site's images",
    )
    calibrate.add_argument("--json", action="store_true")

    predict = command("predict", cmd_predict, "score images or folders with the champion model")
    predict.add_argument("paths", nargs="+")
    predict.add_argument("--model", default=f"models:/{REGISTERED_MODEL_NAME}@champion")
    predict.add_argument("--out", default="predictions.csv")
    predict.add_argument("--heatmaps", help="folder for Grad-CAM overlay PNGs")
    predict.add_argument("--operating-point", help=OPERATING_POINT_HELP)
    predict.add_argument("--json", action="store_true")

    models = command("models", cmd_models, "list registered model versions with their metrics and aliases")
    models.add_argument("--name", default=REGISTERED_MODEL_NAME)
    models.add_argument("--json", action="store_true")

    promote = command("promote", cmd_promote, "make VERSION the champion")
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual promotion")
    promote.add_argument("--name", default=REGISTERED_MODEL_NAME)

    rollback = command("rollback", cmd_rollback, "move the champion alias back to the previous champion")
    rollback.add_argument("--reason", default="manual rollback")
    rollback.add_argument("--name", default=REGISTERED_MODEL_NAME)

    dashboard = command(
        "dashboard", cmd_dashboard, "start (or reuse) the state folder's Prefect server and dashboard"
    )
    dashboard.add_argument(
        "--port", type=int, help="port of a server to start (default 4200, or a free port when 4200 is taken)"
    )
    dashboard.add_argument("--stop", action="store_true", help="stop the state folder's Prefect server")

    mlflow_ui = command("mlflow-ui", cmd_mlflow_ui, "open the MLflow registry UI on 127.0.0.1")
    mlflow_ui.add_argument("--port", type=int, default=5000)

    serve = command(
        "serve",
        cmd_serve,
        "run the nightly and on-new-data deployments in this process (schedules, triggers)",
    )
    serve.add_argument("--data", help="data folder for the nightly run (default: demo data)")
    serve.add_argument("--cron", default="0 2 * * *")
    serve.add_argument(
        "--timezone", default=None, help="IANA zone of the cron (default $CXR_TIMEZONE or UTC)"
    )
    serve.add_argument(
        "--debounce",
        type=float,
        default=DEFAULT_DEBOUNCE_S,
        help="at most one on-new-data run per inbox per N s",
    )
    serve.add_argument(
        "--data-root",
        action="append",
        default=[],
        help="folder that event-named data folders must lie in (repeatable; default: the --data folder's parent)",
    )
    add_external_arguments(serve)
    serve.add_argument(
        "--review-every",
        type=float,
        metavar="SECONDS",
        help="also serve review-sync: push the review queue to Label Studio and pull finished labels this often",
    )
    serve.add_argument(
        "--review-into",
        metavar="DIR",
        help="where review-sync puts labelled images (default: the --data folder; use the watched inbox to retrain on them)",
    )
    notify = serve.add_mutually_exclusive_group()
    notify.add_argument(
        "--notify-webhook",
        metavar="URL",
        default=os.environ.get(NOTIFY_WEBHOOK_ENV),
        help=f"post a message here when a retraining run fails or the champion changes (default ${NOTIFY_WEBHOOK_ENV})",
    )
    notify.add_argument(
        "--notify-block",
        metavar="TYPE/NAME",
        help="send those messages through a saved Prefect notification block instead (e.g. slack-webhook/ops)",
    )

    status = command(
        "status",
        cmd_status,
        "where things stand: champion, recent runs, next nightly run, what is up, inbox backlog",
    )
    status.add_argument("--name", default=REGISTERED_MODEL_NAME)
    status.add_argument("--json", action="store_true")

    watch = command("watch", cmd_watch, "emit cxr.data.arrived when new files in INBOX have settled")
    watch.add_argument("inbox")
    watch.add_argument("--settle", type=float, default=30.0, help="seconds without changes before announcing")
    watch.add_argument("--poll", type=float, default=5.0)
    watch.add_argument("--once", action="store_true", help="exit after the first event")
    watch.add_argument(
        "--debounce",
        type=float,
        default=DEFAULT_DEBOUNCE_S,
        help="at most one event per N s: later files are announced when the window ends (match cxr serve's)",
    )
    add_cluster(command)
    add_review(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from cxr.core.errors import CxrError

    if args.verbose:
        set_verbose()
    enable_terminal_progress(not getattr(args, "json", False))
    try:
        if args.command != "cluster":
            use_stack_if_up()  # the stack `cxr cluster up` started, unless the user's variables say otherwise
        configure_environment()  # also quiets TensorFlow's native logs (cxr.core.native_logs) unless verbose
        if args.command in RECORDED_COMMANDS:
            from cxr.ops.prefect_api import use_prefect_api

            use_prefect_api()  # before Prefect is imported: it reads its settings once
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
