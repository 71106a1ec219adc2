"""`cxr status` without a Prefect server, and the inbox backlog (with a server: test_operating)."""

from __future__ import annotations

import time

from cxr.ops.status import gather_status, watched_inboxes
from cxr.ops.watch import save_announced, snapshot

UNREACHABLE_API = "http://127.0.0.1:9/api"  # nothing listens on the discard port


def test_inbox_backlog_counts_finished_files_not_yet_announced(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(b"announced")
    save_announced(inbox, snapshot(inbox), time.time())
    (inbox / "b.png").write_bytes(b"new")
    (inbox / "c.png.part").write_bytes(b"still being copied")
    assert watched_inboxes() == [{"path": str(inbox.resolve()), "exists": True, "waiting_files": 1}]

    (inbox / "a.png").write_bytes(b"changed since it was announced")
    assert watched_inboxes()[0]["waiting_files"] == 2


def test_without_a_prefect_server_the_prefect_parts_are_null_and_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_API_URL", UNREACHABLE_API)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    status = gather_status()
    assert {
        key: status[key] for key in ("champion", "recent_runs", "next_scheduled", "dashboard_url", "serving")
    } == {
        "champion": None,
        "recent_runs": None,
        "next_scheduled": None,
        "dashboard_url": None,
        "serving": None,
    }
    assert status["inboxes"] == []
    assert status["local_server"] is None  # this state folder never started one
    assert any("no Prefect server" in note for note in status["notes"])
    assert any("no champion yet" in note for note in status["notes"])
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create an empty registry
