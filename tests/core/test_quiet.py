"""Quiet consoles: TensorFlow's native log lines are dropped unless CXR_LOG_LEVEL=DEBUG."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cxr.core.native_logs import LOG_LEVEL_ENV, NATIVE_LOG_LINE, drop_native_log_lines
from tests.helpers.servers import REPO

# Lines TensorFlow 2.21 printed on this CPU machine, and lines that must survive.
NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796112366.654625    6044 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796112366.654937    6044 cudart_stub.cc:31] Could not find cuda drivers\n",
    b"E0000 00:00:1796112370.562162    6044 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n",
]
KEPT = [
    b"<string>:7: UserWarning: a python warning stays\n",
    b"08:12:39.206 | INFO    | prefect.flow_runs - Finished in state Completed()\n",
    b"F0000 00:00:1796112370.562162    6044 main.cc:1] fatal native errors stay\n",
    b"Traceback (most recent call last):\n",
]
# Imports TensorFlow the way a flow-run process does (the flows package quiets first) and uses a device.
IMPORT_TF = (
    "import flows, sys, warnings\n"
    "import tensorflow as tf\n"
    "print(float(tf.reduce_sum(tf.ones((2, 2)))))\n"
    "warnings.warn('python warnings stay')\n"
)


def test_only_native_log_lines_are_dropped():
    mixed = b"".join(line for pair in zip(NATIVE, KEPT, strict=True) for line in pair)
    assert drop_native_log_lines(mixed) == b"".join(KEPT)
    assert all(NATIVE_LOG_LINE.match(line) for line in NATIVE)


def _stderr_of_tensorflow_import(**env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("TF_CPP", "GLOG"))}
    environment.pop(LOG_LEVEL_ENV, None)
    environment.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_TF],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.strip() == "4.0"
    return done.stderr


@pytest.mark.slow
def test_tensorflow_import_is_quiet_by_default_and_verbose_on_request():
    quiet = _stderr_of_tensorflow_import()
    assert "python warnings stay" in quiet
    assert not [line for line in quiet.splitlines() if NATIVE_LOG_LINE.match(line.encode())], quiet

    verbose = _stderr_of_tensorflow_import(**{LOG_LEVEL_ENV: "debug"})
    if not [line for line in verbose.splitlines() if NATIVE_LOG_LINE.match(line.encode())]:
        pytest.skip("TensorFlow printed no native log lines on this machine, so there is nothing to hide")
    assert "python warnings stay" in verbose


def test_verbose_flag_reaches_the_processes_a_command_starts(monkeypatch, capsys):
    from cli.main import main
    from cxr.core.native_logs import is_verbose

    monkeypatch.setenv(LOG_LEVEL_ENV, "INFO")  # restored after the test
    assert not is_verbose()
    assert main(["models", "--json", "--verbose"]) == 0
    assert os.environ[LOG_LEVEL_ENV] == "DEBUG" and is_verbose()  # inherited by served runs and workers
