"""Run a task inside a flow and remember whether Prefect reused its cached result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import Task, get_run_logger


@dataclass
class StageRunner:
    """Calls tasks in order; `cached` lists the names of the tasks whose results were reused.

    A cached result that points at files which are gone or damaged (results may define `is_intact()`)
    is recomputed with `refresh_cache`, so a cleaned or corrupted state folder never breaks a run.
    """

    cached: list[str] = field(default_factory=list)

    def __call__(self, task: Task, *args: Any, **kwargs: Any) -> Any:
        state = task(*args, return_state=True, **kwargs)
        result = state.result()  # re-raises the task's exception when it failed
        if state.name != "Cached":
            return result
        if getattr(result, "is_intact", lambda: True)():
            self.cached.append(task.name)
            return result
        get_run_logger().warning(
            "cached %s result points at missing or damaged files; recomputing", task.name
        )
        return task.with_options(refresh_cache=True)(*args, **kwargs)
