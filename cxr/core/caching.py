"""Content-derived cache keys, so identical data + config + code reuse task results across runs.

Prefect's default policy includes the flow run id, which makes every nightly run start from scratch.
`ContentKey` hashes only what decides a task's output: its inputs (which are digests, paths and
config values), an optional content fingerprint (e.g. a data folder's file listing) and the source
code of every `cxr` module its task module reaches through imports (`cxr.core.import_closure`), so no
list of modules can miss one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect.cache_policies import CachePolicy
from prefect.transactions import IsolationLevel

from cxr import __version__
from cxr.core.import_closure import import_closure, module_source
from cxr.core.locking import cache_lock_manager

if TYPE_CHECKING:
    from prefect import Task


def stable_json(value: Any) -> str:
    """Canonical JSON for hashing: sorted keys; pydantic models and paths as plain data."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "model_dump"):
            # The context lets a model leave out what does not decide content (a stamp's mtime).
            return obj.model_dump(mode="json", context={"content_key": True})
        return str(obj)

    return json.dumps(value, sort_keys=True, default=default, separators=(",", ":"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def code_version(module_names: Iterable[str]) -> str:
    """Digest of the package version and the source of the given modules."""
    digest = hashlib.sha256(__version__.encode())
    for name in sorted(module_names):
        digest.update(module_source(name).encode())
    return digest.hexdigest()[:16]


@dataclass
class ContentKey(CachePolicy):
    """Cache key = task name + inputs + optional content fingerprint + code version.

    The code version covers the import closure of the task's module inside `cxr` (its lineage and state
    folders use the same closure). `fingerprint` maps the task's inputs to a digest of content they point at. A task names its state folder by
    `current_task_key()`, so the folder and the cached result always share one key.
    Serializable: a task holds a lock on its key (in the state folder) while it computes, so an
    identical run started at the same time waits for the result and reuses it.
    """

    fingerprint: Callable[[dict[str, Any]], str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.isolation_level = self.isolation_level or IsolationLevel.SERIALIZABLE
        self.lock_manager = self.lock_manager or cache_lock_manager()

    def key(self, task: Task, inputs: dict[str, Any]) -> str:
        """SHA-256 of what decides the output of `task` called with `inputs`."""
        payload = {
            "task": task.name,
            "inputs": inputs,
            "code": code_version(import_closure(task.fn.__module__)),
        }
        if self.fingerprint is not None:
            payload["content"] = self.fingerprint(inputs)
        return sha256_text(stable_json(payload))

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:  # noqa: ANN001
        return self.key(task_ctx.task, inputs)


def current_task_key() -> str:
    """The running task's `ContentKey.key`: the payload of its cache key, for naming its state folder."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None or not isinstance(context.task.cache_policy, ContentKey):
        raise RuntimeError("current_task_key() needs a running task with a ContentKey cache policy")
    return context.task.cache_policy.key(context.task, context.parameters)
