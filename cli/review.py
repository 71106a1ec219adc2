"""`cxr review up | down | status | push | pull | add`: the review queue and its Label Studio server."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.output import print_json

REVIEW_HELP = (
    "the review loop: queue referred images, label them in Label Studio, pull the labels back as data"
)


def add_review(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `review` through the parser's `command(name, handler, help)` helper."""
    review = command("review", cmd_review, REVIEW_HELP)
    actions = review.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        return parser

    action("up", "start Label Studio on 127.0.0.1 (data, admin password and API token in the state folder)")
    action("down", "stop Label Studio")
    action("status", "the queue's counts and where Label Studio is (url, project_id, token_file)")
    action("push", "send queued images to Label Studio as tasks with the model's answer pre-annotated")
    pull = action("pull", "bring finished labels back: Pneumonia/Normal images into DATA_DIR's class folders")
    pull.add_argument("--into", required=True, metavar="DATA_DIR", help="the training data folder to add to")
    add = action("add", "queue images by hand (e.g. answers that came from `mlflow models serve`)")
    add.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    add.add_argument("--model-version", default="unknown", help="the model that answered (models:/NAME/N)")
    add.add_argument("--answer", choices=["pneumonia", "normal"], help="that model's label")
    add.add_argument("--probability", type=float, help="that model's P(pneumonia)")


def cmd_review(args: argparse.Namespace) -> int:
    from cxr.review import server

    handlers: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "up": lambda _: {**server.up(), "token_file": str(server.token_file())},
        "down": lambda _: {"stopped": server.down()},
        "status": lambda _: review_status(),
        "push": _push,
        "pull": _pull,
        "add": _add,
    }
    result = handlers[args.action](args)
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            print(f"{key}: {'-' if value is None else value}")
    return 0


def _client():  # noqa: ANN202 - cxr.review.labelstudio.LabelStudio
    from cxr.review.labelstudio import LabelStudio
    from cxr.review.server import connection

    return LabelStudio(*connection())


def _push(args: argparse.Namespace) -> dict[str, Any]:
    from cxr.review.sync import push

    started = time.perf_counter()
    result = push(_client())
    return {**result, "seconds": round(time.perf_counter() - started, 2)}


def _pull(args: argparse.Namespace) -> dict[str, Any]:
    from cxr.review.sync import pull

    started = time.perf_counter()
    result = pull(_client(), Path(args.into))
    return {
        **result,
        "into": str(Path(args.into).resolve()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _add(args: argparse.Namespace) -> dict[str, Any]:
    from cxr.core.errors import DataError
    from cxr.data.scanning import real_path, scan_folder
    from cxr.review.queue import enqueue

    files: list[Path] = []
    for path in map(Path, args.paths):
        if path.is_dir():
            files += [
                Path(real_path(found.path)) for found in scan_folder(path.resolve()) if not found.problem
            ]
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"not found: {path}")
    added = sum(
        enqueue(
            path,
            origin="manual",
            decision="manual",
            model_version=args.model_version,
            model_label=args.answer,
            probability=args.probability,
        )
        for path in files
    )
    return {"queued": added, "already_queued": len(files) - added}


def review_status() -> dict[str, Any]:
    """`cxr review status --json`: the queue's counts, and the server's url and project when it is up."""
    from cxr.review import queue, server
    from cxr.review.sync import labelled_count, remembered_project_id

    record = server.running()
    url = record["url"] if record and server.answers(record["url"], server.read_token()) else None
    project = remembered_project_id()
    return {
        "url": url,
        "project_id": project,
        "token_file": str(server.token_file()),
        **queue.counts(),
        "labelled": labelled_count(_client()) if url and project is not None else None,
        "log": str(server.log_file()),
    }
