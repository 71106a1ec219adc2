"""`python -m bench.soak`: new images arriving in a data folder keep patient ids of their own, and one soak
cycle on a real `cxr cluster` (PostgreSQL restarted before its run) loses no image, registers one version for
its data digest and leaves no port open."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak_stack import REPO, add_images, cxr_env
from cxr.data.layouts import DEFAULT_PATIENT_PATTERN
from cxr.ops import postgres, stack_security

SOAK_TIMEOUT_S = 1500  # `up` ~100 s, one tiny run 245-300 s, `down` ~30 s on this busy 2-core machine


def test_new_images_are_new_patients_and_one_file_is_unreadable(tmp_path):
    first, second = add_images(tmp_path, 1, 8, 32), add_images(tmp_path, 2, 8, 32)
    assert len(set(first + second)) == len(first) + len(second) == 18  # no file of cycle 1 overwritten
    patients = [{re.match(DEFAULT_PATIENT_PATTERN, path.name)["patient"] for path in added}
                for added in (first, second)]  # fmt: skip
    assert not patients[0] & patients[1]
    assert [path.read_bytes()[:2] for path in first].count(b"\xff\xd8") == 9  # all JPEG-like, one cut short
    assert first[-1].stat().st_size < 32


@pytest.mark.slow
@pytest.mark.skipif(not postgres.is_available(), reason=f"no PostgreSQL: {postgres.INSTALL_HINT}")
@pytest.mark.skipif(importlib.util.find_spec("flask_wtf") is None, reason=stack_security.AUTH_INSTALL_HINT)
def test_one_soak_cycle_with_postgres_restarted_loses_nothing_and_leaves_no_port(tmp_path):
    command = [sys.executable, "-m", "bench.soak", "--cycles", "1", "--faults", "postgres_restarted",
               "--images", "40", "--new-images", "8", "--json"]  # fmt: skip
    run = subprocess.run(
        command, cwd=REPO, env=cxr_env(tmp_path), capture_output=True, text=True, timeout=SOAK_TIMEOUT_S
    )
    assert run.stdout.strip(), run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, json.dumps(report)[-3000:]
    cycle = report["per_cycle"][0]
    assert cycle["fault"] == "postgres_restarted" and cycle["injected"] and cycle["service_back_s"] > 0
    assert report["completed"] + report["recovered"] == 1
    assert report["images_lost"] == 0
    assert report["versions"] == report["digests"] == 1 and report["one_version_per_digest"]
    assert report["champion_always_exists"]
    assert "postgres" in report["down"] and report["ports_left"] == []
    assert not Path(report["state_dir"]).exists()  # the soak's folders are gone
