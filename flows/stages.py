"""Run a task inside a flow and remember whether Prefect reused its cached result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import Task


@dataclass
class StageRunner:
    """Calls tasks in order; `cached` lists the names of the tasks whose results were reused."""

    cached: list[str] = field(default_factory=list)

    def __call__(self, task: Task, *args: Any, **kwargs: Any) -> Any:
        state = task(*args, return_state=True, **kwargs)
        if state.name == "Cached":
            self.cached.append(task.name)
        return state.result()  # re-raises the task's exception when it failed
