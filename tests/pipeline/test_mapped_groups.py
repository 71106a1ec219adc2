"""Mapped stages in groups (`flows.stages.StageRunner.map_groups`): at most `width` task runs whatever the
number of items, so a cached rerun of a big folder makes as few calls to the Prefect server as a small one's."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from flows.stages import groups_of


class Written(BaseModel):
    """A result pointing at a file, intact while the file holds what the task wrote."""

    path: str

    def is_intact(self) -> bool:
        return Path(self.path).read_text() == "written"


def test_groups_are_consecutive_near_equal_and_at_most_the_width():
    assert groups_of(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert groups_of(list(range(63)), 8) == [list(range(i * 63 // 8, (i + 1) * 63 // 8)) for i in range(8)]
    assert groups_of([1, 2], 8) == [[1], [2]]
    assert groups_of([1, 2, 3], None) == [[1], [2], [3]]
    assert groups_of([], 8) == []


def test_map_groups_runs_at_most_width_tasks_and_recomputes_a_damaged_group(prefect_harness, tmp_path):
    """Five items on a width of 2: two task runs, results in item order; rerun cached; a cached group one of
    whose files was damaged runs again (alone). Checked: with `_intact` reading only `is_intact` of the result
    itself (a list has none) the damaged group is reused and the file stays damaged."""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.stages import StageRunner

    calls: list[list[str]] = []

    @task(name="probe-write", cache_policy=INPUTS, persist_result=True)
    def write(paths: list[str]) -> list[Written]:
        calls.append([Path(path).name for path in paths])
        for path in paths:
            Path(path).write_text("written")
        return [Written(path=path) for path in paths]

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def mapped(paths: list[str]) -> tuple[list[Written], list[str]]:
        run = StageRunner(width=2)
        return run.map_groups(write, paths), run.cached

    names = ["a", "b", "c", "d", "e"]
    paths = [str(tmp_path / name) for name in names]

    results, cached = mapped(paths)
    assert [result.path for result in results] == paths
    assert sorted(calls) == [["a", "b"], ["c", "d", "e"]] and cached == []

    calls.clear()
    assert mapped(paths)[1] == ["probe-write"] and calls == []

    (tmp_path / "d").write_text("damaged")
    results, cached = mapped(paths)
    assert calls == [["c", "d", "e"]] and cached == []
    assert (tmp_path / "d").read_text() == "written" and all(result.is_intact() for result in results)
