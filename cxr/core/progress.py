"""Progress of long steps: a terminal bar with rate and ETA, and a Prefect progress artifact in a run.

The bar is drawn only where a command switched it on (`enable_terminal_progress`, which the CLI does
unless `--json`) and stdout is a terminal; served runs and piped output get no bar. Log lines
printed while a bar is shown appear above it. The artifact (a percentage on the run's dashboard
page) is updated at most every `ARTIFACT_INTERVAL_S` seconds, so a long run does not flood the API.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ARTIFACT_INTERVAL_S = 5.0

log = logging.getLogger(__name__)
_terminal = False
_lock = threading.Lock()
_live: Any = None  # the shared rich Progress while any bar is shown
_live_users = 0
_redirected: list[tuple[Any, Any]] = []  # (rich Console of a log handler, its own file)


def enable_terminal_progress(enabled: bool = True) -> None:
    """Draw bars in this process when `enabled` and stdout is a terminal."""
    global _terminal
    _terminal = enabled and sys.stdout.isatty()


def terminal_progress_enabled() -> bool:
    return _terminal


def _rate_column(unit: str) -> Any:  # noqa: ANN401 - rich ProgressColumn
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:  # noqa: ANN401
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {task.fields.get('unit', unit)}/s")

    return RateColumn()


def _acquire_live() -> Any:  # noqa: ANN401 - rich Progress
    """The shared bar display, started on first use; log handlers' consoles print above it meanwhile."""
    global _live, _live_users
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with _lock:
        if _live is None:
            _live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                _rate_column("items"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            stderr = sys.stderr
            _live.start()  # from here sys.stdout/sys.stderr print above the bars
            _redirect_log_consoles(stderr)
        _live_users += 1
        return _live


def _release_live() -> None:
    global _live, _live_users
    with _lock:
        _live_users -= 1
        if _live_users == 0 and _live is not None:
            _restore_log_consoles()
            _live.stop()
            _live = None


def _redirect_log_consoles(stderr: Any) -> None:  # noqa: ANN401 - the stream before the display
    """Handlers that own a rich Console on stderr (Prefect's console handler) print above the bars."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            console = getattr(handler, "console", None)
            if console is not None and getattr(console, "file", None) is stderr:
                _redirected.append((console, console.file))
                console.file = sys.stderr  # rich's proxy while the display is live


def _restore_log_consoles() -> None:
    while _redirected:
        console, original = _redirected.pop()
        console.file = original


class StageProgress:
    """How far one step is: `advance()` or `update()` it; `close()` when done (or use `stage_progress`)."""

    def __init__(self, description: str, total: float, unit: str, *, artifact_key: str | None = None):
        self.description = description
        self.total = max(float(total), 1.0)
        self.completed = 0.0
        self._bar = _acquire_live() if _terminal and total > 0 else None  # nothing to do: no bar
        self._task = self._bar.add_task(description, total=self.total, unit=unit) if self._bar else None
        self._artifact_id = _create_artifact(artifact_key, description) if artifact_key else None
        self._artifact_at = time.monotonic()

    def advance(self, amount: float = 1.0) -> None:
        self.update(completed=self.completed + amount)

    def update(self, *, completed: float | None = None, description: str | None = None) -> None:
        if completed is not None:
            self.completed = min(float(completed), self.total)
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self.description)
        if self._artifact_id is not None and time.monotonic() - self._artifact_at >= ARTIFACT_INTERVAL_S:
            self._publish()

    def close(self, description: str | None = None) -> None:
        """Final state: the bar stays on screen with `description`; the artifact shows where it ended."""
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self.description)
            self._bar.stop_task(self._task)
            self._bar = None
            _release_live()
        if self._artifact_id is not None:
            self._publish()
            self._artifact_id = None

    def _publish(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self._artifact_at = time.monotonic()
        try:
            update_progress_artifact(
                self._artifact_id, round(100.0 * self.completed / self.total, 1), description=self.description
            )
        except Exception as error:  # progress must never fail the step it describes
            log.warning("progress artifact not updated (%s); continuing without it", error)
            self._artifact_id = None


def _create_artifact(key: str, description: str) -> Any:  # noqa: ANN401 - UUID or None
    """A progress artifact of the current Prefect run; None outside a run."""
    from prefect.artifacts import create_progress_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    try:
        return create_progress_artifact(progress=0.0, key=key, description=description)
    except Exception as error:  # progress must never fail the step it describes
        log.warning("progress artifact %s not created (%s)", key, error)
        return None


@contextmanager
def stage_progress(
    description: str, total: float, unit: str, *, artifact_key: str | None = None
) -> Iterator[StageProgress]:
    """A `StageProgress` closed when the block ends, whether it succeeds or fails."""
    progress = StageProgress(description, total, unit, artifact_key=artifact_key)
    try:
        yield progress
    finally:
        progress.close()


def keras_progress_callback(progress: StageProgress, *, epochs: int, steps_per_epoch: int) -> Any:  # noqa: ANN401 - keras.callbacks.Callback
    """A Keras callback moving `progress` (total `epochs * steps_per_epoch` steps) step by step."""
    import keras

    epoch_now = [0]

    def begin(epoch: int, logs: dict | None = None) -> None:
        epoch_now[0] = epoch
        progress.update(completed=epoch * steps_per_epoch, description=f"train epoch {epoch + 1}/{epochs}")

    def step(batch: int, logs: dict | None = None) -> None:
        progress.update(completed=epoch_now[0] * steps_per_epoch + batch + 1)

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_train_batch_end=step)
