"""`cxr review push` and `pull`: queued images to Label Studio tasks, finished annotations back as data.

Push sends every queued item as a task whose pre-annotation is the model's answer, scored by the model's
confidence (max(p, 1 - p)): Label Studio's uncertainty sampling shows the least confident first. Pull
writes Pneumonia and Normal answers into the data folder's class folders with a provenance record
(`cxr.data.provenance`) and records the rest. Both are safe to repeat and to run at once: a push holds
the queue's push lock (two pushes would each send the same image), a pull its pull lock, each image's
record is written exclusively, and the queue changes only after Label Studio answered, so a server that
is down loses nothing. A task is an item's only while it shows the item's image: task ids start again
in a new Label Studio database.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cxr.core.atomic_files import write_atomically
from cxr.core.locking import file_lock
from cxr.data.provenance import ReviewRecord, reviewed_image_path, write_record
from cxr.model.referral import OUT_OF_DOMAIN
from cxr.review import queue
from cxr.review.labelstudio import (
    CHOICE_OF_CLASS,
    CLASS_OF_CHOICE,
    FROM_NAME,
    NOT_XRAY_CHOICE,
    TO_NAME,
    LabelStudio,
)
from cxr.review.queue import QueueItem, review_dir

IMPORT_BATCH = 500


def _project_file() -> Path:
    return review_dir() / "project.json"


def project_id(client: LabelStudio) -> int:
    """The review project's id on this server (made on first use, remembered in the state folder)."""
    try:
        known = json.loads(_project_file().read_text()).get("project_id")
    except (OSError, ValueError):
        known = None
    found = client.project(known)
    if found != known:
        _project_file().write_text(json.dumps({"project_id": found}))
    client.serve_folder(found, str(review_dir() / "images"))
    return found


def remembered_project_id() -> int | None:
    try:
        return json.loads(_project_file().read_text()).get("project_id")
    except (OSError, ValueError):
        return None


def _summary(item: QueueItem) -> str:
    answer = item.model_label or "-"
    chance = "" if item.probability is None else f", P(pneumonia) {item.probability:.3f}"
    return f"{item.model_version}: {item.decision} (its label {answer}{chance}); from {item.source}"


def task_of(item: QueueItem) -> dict[str, Any]:
    """The Label Studio task of a queued image, with the model's answer as pre-annotation."""
    image = f"/data/local-files/?d={Path(item.image).relative_to(review_dir())}"
    task: dict[str, Any] = {"data": {"image": image, "sha256": item.sha256, "summary": _summary(item)}}
    choice = (
        NOT_XRAY_CHOICE if item.decision == OUT_OF_DOMAIN else CHOICE_OF_CLASS.get(item.model_label or "")
    )
    if choice is not None:
        confidence = 0.0 if item.probability is None else max(item.probability, 1.0 - item.probability)
        task["predictions"] = [
            {
                "model_version": item.model_version,
                "score": round(confidence, 4),
                "result": [
                    {
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "choices",
                        "value": {"choices": [choice]},
                    }
                ],
            }
        ]
    return task


def push(client: LabelStudio) -> dict[str, int]:
    """Send every queued item as a task; an image Label Studio already holds (an earlier push that
    stopped halfway) is adopted, not sent twice. Returns counts sent and adopted."""
    with file_lock(review_dir() / "push.lock"):
        project = project_id(client)
        waiting = queue.items(queue.QUEUED)
        held = {task["data"].get("sha256"): task["id"] for task in client.tasks(project)} if waiting else {}
        adopted = [item for item in waiting if item.sha256 in held]
        _mark_sent({item.sha256: held[item.sha256] for item in adopted})
        fresh = [item for item in waiting if item.sha256 not in held]
        for start in range(0, len(fresh), IMPORT_BATCH):
            batch = fresh[start : start + IMPORT_BATCH]
            ids = client.import_tasks(project, [task_of(item) for item in batch])
            _mark_sent({item.sha256: task_id for item, task_id in zip(batch, ids, strict=True)})
    return {"sent": len(fresh), "adopted": len(adopted), "project_id": project}


def _mark_sent(task_ids: dict[str, int]) -> None:
    when = queue.now()
    with queue.connect() as db:
        for sha256, task_id in task_ids.items():
            queue.update(db, sha256, state=queue.SENT, task_id=task_id, sent_at=when)


def _answer(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest finished annotation with a choice, or None."""
    done = [
        note
        for note in task.get("annotations", [])
        if not note.get("was_cancelled") and _choice(note) is not None
    ]
    return (
        max(done, key=lambda note: note.get("updated_at") or note.get("created_at") or "") if done else None
    )


def _choice(annotation: dict[str, Any]) -> str | None:
    for result in annotation.get("result", []):
        if result.get("from_name") == FROM_NAME and result.get("value", {}).get("choices"):
            return result["value"]["choices"][0]
    return None


def pull(client: LabelStudio, data_dir: Path) -> dict[str, int]:
    """Bring back finished annotations; counts added (to `data_dir`), recorded, requeued (task deleted).

    Images and records are written first, the queue changes last in one transaction: a pull stopped
    halfway leaves items `sent`, and the next pull finds their files and records already there.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {"added": 0, "recorded": 0, "requeued": 0, "waiting": 0}
    with file_lock(review_dir() / "pull.lock"):
        sent = queue.items(queue.SENT)
        if not sent:
            return counts
        tasks = {task["id"]: task for task in client.tasks(project_id(client))}
        users: dict[int, str] = {}
        changes: dict[str, dict[str, Any]] = {}
        for item in sent:
            task = _task_of(item, tasks)
            if task is None:  # deleted in Label Studio: the image still needs an answer
                changes[item.sha256] = {"state": queue.QUEUED, "task_id": None, "sent_at": None}
                counts["requeued"] += 1
            elif (note := _answer(task)) is None:
                counts["waiting"] += 1
            else:
                changes[item.sha256] = _return(client, item, note, data_dir, users)
                counts[changes[item.sha256]["outcome"]] += 1
        with queue.connect() as db:
            for sha256, change in changes.items():
                queue.update(db, sha256, **change)
    return counts


def _task_of(item: QueueItem, tasks: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The item's task, if Label Studio still holds it: the task of its id that shows its image (in a new
    Label Studio database the id may name another image's task)."""
    task = tasks.get(item.task_id)
    return task if task is not None and task["data"].get("sha256") == item.sha256 else None


def _return(
    client: LabelStudio, item: QueueItem, note: dict[str, Any], data_dir: Path, users: dict[int, str]
) -> dict[str, Any]:
    """Add the image to `data_dir` (Pneumonia, Normal) or only record the answer; the item's new fields."""
    choice = _choice(note)
    author = note.get("completed_by")
    reviewer = author.get("email") if isinstance(author, dict) else client.user_email(int(author or 0), users)
    reviewed_at = note.get("updated_at") or note.get("created_at") or queue.now()
    label = CLASS_OF_CHOICE.get(choice or "")
    added_as = None
    if label is not None:
        target = reviewed_image_path(data_dir, label, item.sha256, Path(item.image).suffix)
        record = ReviewRecord(
            sha256=item.sha256,
            label=label,
            file=str(target.relative_to(data_dir)),
            reviewer=reviewer,
            reviewed_at=reviewed_at,
            task_id=int(item.task_id or 0),
            model_version=item.model_version,
            model_answer=item.model_label,
            decision=item.decision,
            probability=item.probability,
        )
        if not target.is_file():  # same name, same bytes: a rerun after a crash rewrites nothing
            write_atomically(target, lambda partial: shutil.copyfile(item.image, partial))
        write_record(data_dir, record)
        added_as = str(target)
    return {
        "state": queue.RETURNED,
        "answer": choice,
        "reviewer": reviewer,
        "reviewed_at": reviewed_at,
        "outcome": queue.ADDED if label is not None else queue.RECORDED,
        "added_as": added_as,
        "returned_at": queue.now(),
    }


def labelled_count(client: LabelStudio) -> int:
    """Sent items that a reviewer has answered in Label Studio and no pull has brought back yet."""
    project = remembered_project_id()
    if project is None:
        return 0
    answered = {task["id"]: task for task in client.tasks(project) if _answer(task) is not None}
    return sum(1 for item in queue.items(queue.SENT) if _task_of(item, answered) is not None)
