"""The inbox watcher: one event per settled burst, remembered across restarts (fake emitter, no server)."""

from __future__ import annotations

import threading
import time

import pytest

from cxr.core.errors import DataError
from cxr.ops.watch import inbox_resource_id, snapshot, watch_inbox

FAST = {"settle_s": 0.4, "poll_s": 0.05, "debounce_s": 0.0}


class Recorder:
    """Stands in for `emit_data_arrived`: records (inbox, new_files) of every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.times: list[float] = []

    def __call__(self, inbox, new_files: int) -> None:
        self.events.append((str(inbox), new_files))
        self.times.append(time.time())


def write_files(folder, names, *, pause_every: int = 0, pause_s: float = 0.0) -> None:
    for index, name in enumerate(names, start=1):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * (index % 7 + 1))
        if pause_every and index % pause_every == 0:
            time.sleep(pause_s)


def test_a_burst_of_500_files_is_one_event_after_it_settles(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"PNEUMONIA/person{i}_virus_{i}.jpeg" for i in range(250)] + [
        f"NORMAL/IM-{i:04d}.jpeg" for i in range(250)
    ]
    # A slow copy: gaps shorter than the settle time must not split the burst.
    writer = threading.Thread(
        target=write_files, args=(inbox, names), kwargs={"pause_every": 50, "pause_s": 0.1}
    )
    recorder = Recorder()
    started = time.monotonic()
    writer.start()
    emitted = watch_inbox(inbox, once=True, timeout_s=20, emit=recorder, **FAST)
    writer.join()

    assert emitted == 1
    assert recorder.events == [(str(inbox), 500)]
    assert time.monotonic() - started >= 0.9 + FAST["settle_s"]  # not before the copy finished


def test_announced_files_are_remembered_and_only_changes_are_announced(tmp_path):
    inbox = tmp_path / "inbox"
    write_files(inbox, ["a.png", "b.png", "c.png"])
    recorder = Recorder()
    assert watch_inbox(inbox, once=True, timeout_s=10, emit=recorder, **FAST) == 1

    # A restarted watcher stays quiet about files it already announced...
    assert watch_inbox(inbox, timeout_s=1.0, emit=recorder, **FAST) == 0
    # ...and announces only what is new or rewritten.
    write_files(inbox, ["d.png"])
    (inbox / "a.png").write_bytes(b"rewritten with another size")
    assert watch_inbox(inbox, once=True, timeout_s=10, emit=recorder, **FAST) == 1
    assert recorder.events == [(str(inbox), 3), (str(inbox), 2)]


def test_keeps_watching_and_emits_once_per_settled_batch(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    recorder = Recorder()

    def two_batches() -> None:
        time.sleep(0.3)
        write_files(inbox, ["first.png"])
        time.sleep(1.5)
        write_files(inbox, ["second.png", "third.png"])

    writer = threading.Thread(target=two_batches)
    writer.start()
    emitted = watch_inbox(inbox, timeout_s=4.0, emit=recorder, **FAST)
    writer.join()
    assert emitted == 2
    assert [count for _, count in recorder.events] == [1, 2]


def test_files_inside_the_debounce_window_are_announced_when_it_ends(tmp_path):
    """Trailing edge: later files are held, not dropped, and all of them go out in ONE event at the window's
    end. Checked: emitting at once gives 3 events inside the window; dropping them gives 1."""
    inbox = tmp_path / "inbox"
    write_files(inbox, ["first.png"])
    recorder = Recorder()

    def two_more_inside_the_window() -> None:
        time.sleep(0.7)  # the first event went out after settling (0.2 s)
        write_files(inbox, ["second.png"])
        time.sleep(0.5)
        write_files(inbox, ["third.png"])

    writer = threading.Thread(target=two_more_inside_the_window)
    writer.start()
    emitted = watch_inbox(inbox, timeout_s=5.0, emit=recorder, settle_s=0.2, poll_s=0.05, debounce_s=2.5)
    writer.join()

    assert emitted == 2
    assert [count for _, count in recorder.events] == [1, 2]
    assert recorder.times[1] - recorder.times[0] >= 2.5


def test_a_restarted_watcher_keeps_the_debounce_window(tmp_path):
    inbox = tmp_path / "inbox"
    write_files(inbox, ["first.png"])
    recorder = Recorder()
    assert (
        watch_inbox(inbox, once=True, timeout_s=5, emit=recorder, settle_s=0.1, poll_s=0.05, debounce_s=1.5)
        == 1
    )

    write_files(inbox, ["second.png"])
    # Restarted at once: it holds the new file until 1.5 s after the first event instead of announcing it now.
    assert (
        watch_inbox(inbox, once=True, timeout_s=5, emit=recorder, settle_s=0.1, poll_s=0.05, debounce_s=1.5)
        == 1
    )
    assert [count for _, count in recorder.events] == [1, 1]
    assert recorder.times[1] - recorder.times[0] >= 1.5


def test_partial_and_hidden_files_are_not_data(tmp_path):
    inbox = tmp_path / "inbox"
    write_files(inbox, ["scan.jpeg", "scan2.jpeg.part", ".DS_Store", "copy.crdownload"])
    (inbox / ".git").mkdir()
    (inbox / ".git" / "HEAD").write_text("ref")
    assert list(snapshot(inbox)) == ["scan.jpeg"]


def test_resource_id_is_stable_per_folder(tmp_path):
    assert inbox_resource_id(tmp_path / "a") == inbox_resource_id(tmp_path / "x" / ".." / "a")
    assert inbox_resource_id(tmp_path / "a") != inbox_resource_id(tmp_path / "b")
    assert inbox_resource_id(tmp_path / "a").startswith("cxr.inbox.")


def test_missing_inbox_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="inbox folder not found"):
        watch_inbox(tmp_path / "nope", once=True, emit=Recorder())
