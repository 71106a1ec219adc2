"""`cxr review up` without Label Studio's own server: what it leaves in the state folder when the program fails."""

from __future__ import annotations

import stat

import pytest

from cxr.review import server


def test_label_studios_data_folder_is_private_to_its_owner(tmp_path, monkeypatch):
    """Label Studio's database keeps the API token in plain text: its folder must not let others in, even
    one an earlier start made under an open umask."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    program = tmp_path / "label-studio"
    program.write_text("#!/bin/sh\nexit 1\n")  # a Label Studio that stops at once
    program.chmod(0o755)
    monkeypatch.setenv(server.LABEL_STUDIO_ENV, str(program))
    data = server.review_dir() / "label-studio"
    data.mkdir(mode=0o755)
    with pytest.raises(server.ReviewServerError, match="did not start"):
        server.up(timeout_s=10)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert server.running() is None
