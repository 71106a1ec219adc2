"""A child process that holds a lock while a test checks it from outside, then dies without releasing it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.helpers.servers import REPO


@contextmanager
def holding(script: str, *args: str) -> Iterator[subprocess.Popen]:
    """`python -c SCRIPT ARGS...` in the repository; entered once it prints `held`, SIGKILLed on exit.

    SCRIPT takes its lock, prints `held` and blocks reading stdin.
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
