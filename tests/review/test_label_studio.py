"""The review loop against a real Label Studio server that this module starts (`cxr review up`).

Reviewers answer through Label Studio's own REST API with the token from `token_file`, never through the
project's client. Skipped where Label Studio is not installed (`make install-review`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli.main import main
from cxr.core.errors import CxrError
from cxr.data.provenance import read_records
from cxr.ops.watch import new_or_changed, snapshot
from cxr.review import queue, server, sync
from cxr.review.labelstudio import LabelStudio
from cxr.review.referred import queue_referred

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        server.label_studio_program() is None, reason="Label Studio is not installed (make install-review)"
    ),
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def review_home(tmp_path_factory):
    """A state folder whose Label Studio runs for the whole module and is stopped after it."""
    home = tmp_path_factory.mktemp("review-home")
    before = os.environ["CXR_HOME"]
    os.environ["CXR_HOME"] = str(home)
    try:
        server.up()
        yield home
    finally:
        server.down()
        os.environ["CXR_HOME"] = before


def _cli(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _images(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        pixels = np.random.default_rng(seed).integers(0, 255, (72, 72), dtype=np.uint8)
        paths.append(folder / f"img{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _queue(folder: Path, seeds: range) -> dict[str, Path]:
    """Queue images as a prediction would (every other one referred, the rest out of domain)."""
    paths = _images(folder, seeds)
    frame = pd.DataFrame(
        {
            "path": [str(path) for path in paths],
            "probability": [0.4 + 0.01 * index for index in range(len(paths))],
            "label": ["normal"] * len(paths),
            "heatmap": [None] * len(paths),
            "domain_score": [0.0] * len(paths),
            "decision": ["refer" if index % 2 == 0 else "out_of_domain" for index in range(len(paths))],
        }
    )
    assert queue_referred(frame, "/models/cxr-v1") == len(paths)
    return {path.name: path for path in paths}


class Reviewer:
    """A person in Label Studio: plain HTTP with the token from `token_file`."""

    def __init__(self, status: dict) -> None:
        token = Path(status["token_file"]).read_text().strip()
        self.http = httpx.Client(
            base_url=status["url"], headers={"Authorization": f"Token {token}"}, timeout=60
        )
        self.project = status["project_id"]

    def tasks(self) -> list[dict]:
        reply = self.http.get(
            "/api/tasks", params={"project": self.project, "page_size": 1000, "fields": "all"}
        )
        reply.raise_for_status()
        return reply.json()["tasks"]

    def label(self, task_id: int, choice: str) -> None:
        result = [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
        ]
        self.http.post(f"/api/tasks/{task_id}/annotations", json={"result": result}).raise_for_status()


def _by_source(tasks: list[dict]) -> dict[str, dict]:
    sources = {item.sha256: Path(item.source).name for item in queue.items()}
    return {sources[task["data"]["sha256"]]: task for task in tasks}


def test_queue_push_label_pull_and_retrain(
    review_home, tiny_dataset, tmp_path, capsys, prefect_harness, monkeypatch
):
    assert Path(_cli(capsys, "review", "status")["token_file"]).stat().st_mode & 0o777 == 0o600
    assert (review_home / "review" / "admin-password").stat().st_mode & 0o777 == 0o600
    secrets = [(review_home / "review" / name).read_text().strip() for name in ("token", "admin-password")]
    assert not any(secret in server.log_file().read_text() for secret in secrets)

    _queue(tmp_path / "predicted", range(0, 8))
    pushed = _cli(capsys, "review", "push")
    assert pushed["sent"] == 8
    status = _cli(capsys, "review", "status")
    assert status["url"].startswith("http://127.0.0.1:") and status["sent"] >= 8
    reviewer = Reviewer(status)
    tasks = _by_source(reviewer.tasks())
    # Pre-annotations: the model's answer, scored by its confidence (lowest first in uncertainty sampling).
    first = tasks["img0.png"]["predictions"][0]
    assert first["result"][0]["value"]["choices"] == ["Normal"] and first["score"] == pytest.approx(0.6)
    assert tasks["img1.png"]["predictions"][0]["result"][0]["value"]["choices"] == ["Not a chest X-ray"]
    answers = [
        "Pneumonia",
        "Normal",
        "Not a chest X-ray",
        "Unsure",
        "Pneumonia",
        "Normal",
        "Normal",
        "Pneumonia",
    ]
    for index, choice in enumerate(answers):
        reviewer.label(tasks[f"img{index}.png"]["id"], choice)
    assert _cli(capsys, "review", "status")["labelled"] == 8

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    announced = snapshot(data)
    pulled = _cli(capsys, "review", "pull", "--into", str(data))
    assert (pulled["added"], pulled["recorded"]) == (6, 2)
    assert new_or_changed(snapshot(data), announced) == 6  # what `cxr watch` announces: on-new-data retrains
    assert _cli(capsys, "review", "pull", "--into", str(data))["added"] == 0
    records = read_records(data)
    assert sorted(record.label for record in records.values()) == ["normal"] * 3 + ["pneumonia"] * 3
    assert all(record.reviewer == "admin@cxr.local" and record.task_id for record in records.values())
    assert len(list((data / "train" / "PNEUMONIA").glob("reviewed-*.png"))) == 3

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["train", "--data", str(data), "--model", "seed", "--image-size", "32", "--epochs", "1"]
    summary = _cli(capsys, *args, "--batch-size", "16")
    assert summary["reviewed"]["images"] == 6 and summary["reviewed"]["in_test"] == 0
    assert summary["reviewed"]["in_train"] + summary["reviewed"]["in_valid"] == 6
    assert summary["reviewed"]["answered_differently"] == 3  # the model had said normal for all six


def test_a_server_that_is_down_loses_nothing(review_home, tmp_path):
    live = LabelStudio(*server.connection())
    dead = LabelStudio(f"http://127.0.0.1:{_free_port()}", "no-token")
    _queue(tmp_path / "sent", range(100, 102))
    assert sync.push(live)["sent"] == 2
    with pytest.raises(CxrError, match="did not answer"):
        sync.pull(dead, tmp_path / "data")
    _queue(tmp_path / "queued", range(110, 113))
    with pytest.raises(CxrError, match="did not answer"):
        sync.push(dead)
    assert {Path(item.source).name for item in queue.items(queue.SENT)} >= {"img100.png", "img101.png"}
    assert {Path(item.source).name for item in queue.items(queue.QUEUED)} == {
        "img110.png",
        "img111.png",
        "img112.png",
    }
    assert sync.push(live)["sent"] == 3


def test_a_task_deleted_in_label_studio_is_queued_again(review_home, tmp_path, capsys):
    _queue(tmp_path / "deleted", range(200, 202))
    _cli(capsys, "review", "push")
    reviewer = Reviewer(_cli(capsys, "review", "status"))
    tasks = _by_source(reviewer.tasks())
    reviewer.http.delete(f"/api/tasks/{tasks['img200.png']['id']}").raise_for_status()
    reviewer.label(tasks["img201.png"]["id"], "Normal")
    pulled = _cli(capsys, "review", "pull", "--into", str(tmp_path / "data"))
    assert (pulled["requeued"], pulled["added"]) == (1, 1)
    assert [Path(item.source).name for item in queue.items(queue.QUEUED)] == ["img200.png"]
    assert _cli(capsys, "review", "push")["sent"] == 1


def test_two_pulls_at_once_add_each_image_once(review_home, tmp_path, capsys):
    _queue(tmp_path / "twice", range(300, 306))
    _cli(capsys, "review", "push")
    reviewer = Reviewer(_cli(capsys, "review", "status"))
    for name, task in _by_source(reviewer.tasks()).items():
        if name.startswith("img3"):
            reviewer.label(task["id"], "Pneumonia")
    data = tmp_path / "data"
    command = [sys.executable, "-m", "cli.main", "review", "pull", "--into", str(data), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(run.communicate(timeout=300)[0].strip().splitlines()[-1]) for run in runs]
    assert sorted(result["added"] for result in results) == [0, 6]
    assert len(list(data.glob("PNEUMONIA/reviewed-*.png"))) == 6 and len(read_records(data)) == 6


def test_the_review_sync_flow_pushes_then_pulls(review_home, tmp_path, capsys, prefect_harness):
    from flows.review_sync import review_sync

    _queue(tmp_path / "synced", range(400, 402))
    first = review_sync(str(tmp_path / "inbox"))
    assert first["push"]["sent"] == 2 and first["pull"]["added"] == 0
    reviewer = Reviewer(_cli(capsys, "review", "status"))
    for name, task in _by_source(reviewer.tasks()).items():
        if name in {"img400.png", "img401.png"}:
            reviewer.label(task["id"], "Normal")
    second = review_sync(str(tmp_path / "inbox"))
    assert second["push"]["sent"] == 0 and second["pull"]["added"] == 2
    assert len(list((tmp_path / "inbox" / "NORMAL").glob("reviewed-*.png"))) == 2


def test_down_leaves_no_port_open(review_home, capsys):
    port = server.running()["port"]
    assert _cli(capsys, "review", "down") == {"stopped": True}
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert main(["review", "push"]) == 2
    assert "cxr review up" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_label_studio_sends_no_error_reports_off_the_machine(tmp_path, monkeypatch):
    """Its own settings, read under the environment `cxr review up` gives it: both Sentry DSNs empty, even
    where this process's environment names some."""
    python = server.label_studio_program().parent / "python"
    if not python.is_file():
        pytest.skip(f"no python beside {server.label_studio_program()}")
    monkeypatch.setenv("SENTRY_DSN", "https://key@example.invalid/1")
    environment = server.label_studio_environment("password", "token", tmp_path)
    read_settings = (
        "import json, os, sys, label_studio; sys.path.insert(0, os.path.dirname(label_studio.__file__)); "
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'core.settings.label_studio'; "
        "from django.conf import settings; "
        "print(json.dumps([settings.SENTRY_DSN, settings.FRONTEND_SENTRY_DSN]))"
    )
    done = subprocess.run(
        [str(python), "-c", read_settings], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["", ""]
