"""Run a task inside a flow and remember whether Prefect reused its cached result."""

from __future__ import annotations

from collections.abc import Iterable
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

    def map(self, task: Task, items: Iterable[Any]) -> list[Any]:
        """`task` over each item on the flow's task runner; results in item order.

        The task counts as reused when every mapped run was (also when there was nothing to map:
        then every item it could have had was reused upstream).
        """
        futures = task.map(list(items))
        futures.wait()
        states = [future.state for future in futures]
        results = [state.result() for state in states]  # re-raises the first failure
        if all(state.name == "Cached" for state in states):
            self.cached.append(task.name)
        return results
