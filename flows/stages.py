"""Run a task inside a flow and remember whether Prefect reused its cached result."""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import State, Task, get_run_logger
from prefect.futures import as_completed

from cxr.core.memory import PeakMemory
from cxr.core.task_policy import StageTimeout, TimeoutParams


@dataclass
class StageRunner:
    """Calls tasks in order; `cached` lists the names of the tasks whose results were reused, and
    `reused` when each reused result was made (UTC, ISO; None when its store cannot tell).

    A cached result that points at files which are gone or damaged (results may define `is_intact()`)
    is recomputed with `refresh_cache`, so a cleaned or corrupted state folder never breaks a run.

    Every task runs under its stage's limit from `limits`, cut to what is left before `deadline` (a
    `time.monotonic()` value: the run's own limit); a task that overruns ends the run with `StageTimeout`.

    `peak_rss_mib` keeps the process's peak resident memory while each task ran (a mapped task: all its
    runs together; a task called more than once: the highest), by task name, in the order they ran.

    `width` caps the task runs of `map_groups` (None: one run per item).
    """

    cached: list[str] = field(default_factory=list)
    reused: dict[str, str | None] = field(default_factory=dict)
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)
    limits: TimeoutParams = field(default_factory=TimeoutParams)
    deadline: float = math.inf
    width: int | None = None

    def limited(self, task: Task) -> tuple[Task, str, float]:
        """`task` with its time limit, and the setting that decided it (`register_s`, `flow_s`, ...)."""
        setting, seconds = self.limits.for_task(task.name) or ("", task.timeout_seconds or math.inf)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StageTimeout(
                f"the run reached its limit of {self.limits.flow_s:g} s (timeouts.flow_s) before {task.name}"
            )
        if left < seconds:
            setting, seconds = "flow_s", left
        return task.with_options(timeout_seconds=seconds if seconds < math.inf else None), setting, seconds

    @staticmethod
    def _raise_if_timed_out(task: Task, states: list[State], setting: str, seconds: float) -> None:
        if any(state.name == "TimedOut" for state in states):
            which = f"timeouts.{setting}" if setting else "its own limit"
            raise StageTimeout(
                f"{task.name} did not finish within {seconds:.0f} s ({which}); the run stops here"
            )

    def _reused(self, task: Task, states: list[State]) -> None:
        self.cached.append(task.name)
        made = [moment for moment in map(_made_at, states) if moment]
        self.reused[task.name] = max(made) if made else None
        get_run_logger().info(
            "reused the cached %s result made %s", task.name, self.reused[task.name] or "earlier"
        )

    def _record_peak(self, name: str, peak: PeakMemory) -> None:
        earlier = self.peak_rss_mib.get(name)
        self.peak_rss_mib[name] = peak.mib if earlier is None or peak.mib is None else max(earlier, peak.mib)

    def __call__(self, task: Task, *args: Any, **kwargs: Any) -> Any:
        """Run `task` and publish the artifacts its result carries: a cached stage shows them too."""
        with PeakMemory() as peak:
            result = self._run(task, *args, **kwargs)
        self._record_peak(task.name, peak)
        for artifact in getattr(result, "artifacts", ()):
            artifact.publish()
        return result

    def _run(self, task: Task, *args: Any, **kwargs: Any) -> Any:
        task, setting, seconds = self.limited(task)
        state = task(*args, return_state=True, **kwargs)
        self._raise_if_timed_out(task, [state], setting, seconds)
        result = state.result()  # re-raises the task's exception when it failed
        if state.name != "Cached":
            return result
        if _intact(result):
            self._reused(task, [state])
            return result
        get_run_logger().warning(
            "cached %s result points at missing or damaged files; recomputing", task.name
        )
        return task.with_options(refresh_cache=True)(*args, **kwargs)

    def map(
        self, task: Task, items: Iterable[Any], *, on_done: Callable[[Any], None] | None = None
    ) -> list[Any]:
        """`task` over each item on the flow's task runner; results in item order.

        `on_done(item)` is called as each item's run finishes (progress). The task counts as reused
        when every mapped run was (also when there was nothing to map: then every item it could have
        had was reused upstream).
        """
        with PeakMemory() as peak:
            results = self._map(task, list(items), on_done)
        self._record_peak(task.name, peak)
        return results

    def _map(self, task: Task, items: list[Any], on_done: Callable[[Any], None] | None) -> list[Any]:
        task, setting, seconds = self.limited(task)
        futures = task.map(items)
        if on_done is not None:
            position = {id(future): index for index, future in enumerate(futures)}
            for future in as_completed(list(futures)):
                on_done(items[position[id(future)]])
        futures.wait()  # also makes each future's final state readable
        states = [future.state for future in futures]
        self._raise_if_timed_out(task, states, setting, seconds)
        results = [state.result() for state in states]  # re-raises the first failure
        for index, (state, result) in enumerate(zip(states, results, strict=True)):
            if state.name == "Cached" and not _intact(result):
                get_run_logger().warning(
                    "cached %s result points at missing or damaged files; recomputing", task.name
                )
                states[index] = task.with_options(refresh_cache=True)(items[index], return_state=True)
                results[index] = states[index].result()
        if all(state.name == "Cached" for state in states):
            self._reused(task, states)
        return results

    def map_groups(
        self, task: Task, items: Iterable[Any], *, on_done: Callable[[list[Any]], None] | None = None
    ) -> list[Any]:
        """`task` over consecutive groups of `items`, at most `width` runs; results flattened, in item order.

        `task` takes a list of items and returns one result per item. Every run is several calls to the
        Prefect server, cached or not, so a cached rerun costs the number of runs, not of items.
        `on_done(group)` is called as each group's run finishes.
        """
        results = self.map(task, groups_of(list(items), self.width), on_done=on_done)
        return [result for group in results for result in group]


def groups_of(items: list[Any], count: int | None) -> list[list[Any]]:
    """`items` cut into at most `count` consecutive groups of near-equal size (None: one group per item)."""
    count = len(items) if count is None else min(count, len(items))
    return [items[len(items) * index // count : len(items) * (index + 1) // count] for index in range(count)]


def _intact(result: Any) -> bool:
    """Whether a cached result's files are still as written (`is_intact()`; a list: every item's)."""
    if isinstance(result, list):
        return all(_intact(item) for item in result)
    return getattr(result, "is_intact", lambda: True)()


def _made_at(state: State) -> str | None:
    """When a cached state's persisted result was written: its local result file's time."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    key = getattr(getattr(state.data, "metadata", None), "storage_key", None)
    if not key:
        return None
    path = Path(key) if os.path.isabs(key) else Path(PREFECT_LOCAL_STORAGE_PATH.value()) / key
    try:
        stamp = path.stat().st_mtime
    except OSError:  # another result store (remote block) or already cleaned
        return None
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(timespec="seconds")
