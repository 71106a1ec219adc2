"""Push and pull against an in-memory Label Studio (the REST calls `cxr.review.labelstudio` makes): what the
queue does when pushes overlap, and when a task id names another image (Label Studio's ids start again in a
new database). The real server's loop is in test_label_studio.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxr.data.provenance import read_records
from cxr.review import queue, sync
from cxr.review.labelstudio import FROM_NAME, TO_NAME


@pytest.fixture(autouse=True)
def own_state_folder(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CXR_HOME", str(home))
    return home


class MemoryLabelStudio:
    """One project whose task ids count from 1, as in a new Label Studio database."""

    def __init__(self, import_delay_s: float = 0.0) -> None:
        self.held: dict[int, dict[str, Any]] = {}
        self.import_delay_s = import_delay_s
        self._guard = threading.Lock()

    def project(self, project_id: int | None) -> int:
        return 1

    def serve_folder(self, project_id: int, folder: str) -> None:
        pass

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        with self._guard:
            return [dict(task) for task in self.held.values()]

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        time.sleep(self.import_delay_s)  # a server that takes a moment: another push may ask meanwhile
        with self._guard:
            ids = list(range(len(self.held) + 1, len(self.held) + 1 + len(tasks)))
            self.held.update(
                {
                    i: {"id": i, "data": task["data"], "annotations": []}
                    for i, task in zip(ids, tasks, strict=True)
                }
            )
        return ids

    def user_email(self, user_id: int, cache: dict[int, str]) -> str:
        return f"user {user_id}"

    def label(self, task_id: int, choice: str) -> None:
        result = [
            {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [choice]}}
        ]
        self.held[task_id]["annotations"] = [
            {"result": result, "completed_by": {"email": "reader@site"}, "updated_at": "2026-12-07T20:00:00Z"}
        ]


def _queue_image(folder: Path, seed: int) -> str:
    path = folder / f"img{seed}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    assert queue.enqueue(path, origin="manual", decision="manual", model_version="v1")
    return next(item.sha256 for item in queue.items() if item.source == str(path.resolve()))


def test_two_pushes_at_once_send_each_image_once(tmp_path):
    sha = _queue_image(tmp_path / "in", 1)
    server = MemoryLabelStudio(import_delay_s=0.5)
    pushes = [threading.Thread(target=sync.push, args=(server,)) for _ in range(2)]
    for push in pushes:
        push.start()
    for push in pushes:
        push.join()
    assert [task["data"]["sha256"] for task in server.held.values()] == [sha]
    assert [(item.state, item.task_id) for item in queue.items()] == [(queue.SENT, 1)]


def test_a_task_id_of_another_image_answers_nothing_for_this_one(tmp_path):
    first = _queue_image(tmp_path / "in", 1)
    sync.push(MemoryLabelStudio())  # task 1 on a server whose database is then replaced
    renewed = MemoryLabelStudio()
    second = _queue_image(tmp_path / "in", 2)
    sync.push(renewed)  # task 1 again, now showing the second image
    renewed.label(1, "Pneumonia")
    assert sync.labelled_count(renewed) == 1
    pulled = sync.pull(renewed, tmp_path / "data")
    assert (pulled["added"], pulled["requeued"]) == (1, 1)
    assert list(read_records(tmp_path / "data")) == [second]
    assert {item.sha256: item.state for item in queue.items()} == {
        first: queue.QUEUED,
        second: queue.RETURNED,
    }
    assert sync.push(renewed)["sent"] == 1  # the first image goes out again for an answer of its own
