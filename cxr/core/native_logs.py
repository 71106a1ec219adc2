"""Quiet consoles: TensorFlow's native (C++/absl) start-up chatter is hidden unless asked for.

On a CPU machine TensorFlow prints lines such as `E0000 ... failed call to cuInit` and
`I0000 ... oneDNN custom operations are on` that read like failures. Some are written while its shared
libraries load, before absl's logging is initialised, so no environment variable hides them: the
import of `tensorflow` runs with file descriptor 2 captured, and everything except those native log
lines is written back afterwards. Python warnings, Prefect's run logs and errors are untouched.

`CXR_LOG_LEVEL=DEBUG` (`cxr --verbose`) shows everything again. Every process that may import
TensorFlow calls `quiet_native_logs()` first: the CLI (via `configure_environment`) and each
flow-run process (via `flows/__init__.py`); children inherit the environment variables.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

LOG_LEVEL_ENV = "CXR_LOG_LEVEL"
VERBOSE_LEVEL = "DEBUG"
# Read by TensorFlow, gRPC and glog when they start; values the user exported win.
QUIET_NATIVE_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # after absl is initialised: no INFO/WARNING/ERROR lines (FATAL stays)
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
}
VERBOSE_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0"}
# `I0000 00:00:1796112366.654625    6044 port.cc:153] ...` and absl's pre-initialisation notice.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
QUIETED_MODULES = ("tensorflow",)


def is_verbose() -> bool:
    return os.environ.get(LOG_LEVEL_ENV, "").strip().upper() == VERBOSE_LEVEL


def set_verbose() -> None:
    """Show native logs in this process and in every process it starts."""
    os.environ[LOG_LEVEL_ENV] = VERBOSE_LEVEL


def quiet_native_logs() -> None:
    """Set the native libraries' log levels and filter TensorFlow's import; idempotent.

    Must run before TensorFlow is imported: afterwards its libraries are loaded and have read the
    variables. Does nothing but set the verbose levels when CXR_LOG_LEVEL is DEBUG.
    """
    for key, value in (VERBOSE_NATIVE_ENV if is_verbose() else QUIET_NATIVE_ENV).items():
        os.environ.setdefault(key, value)
    if is_verbose() or any(name in sys.modules for name in QUIETED_MODULES):
        return
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


def drop_native_log_lines(captured: bytes) -> bytes:
    """`captured` without the native libraries' log lines (everything else is kept, in order)."""
    return b"".join(line for line in captured.splitlines(keepends=True) if not NATIVE_LOG_LINE.match(line))


@contextmanager
def native_log_lines_dropped() -> Iterator[None]:
    """Capture file descriptor 2 for the block and write back what is not a native log line.

    Output of other threads meanwhile is delayed, never lost. A process that dies inside the block
    loses its captured output: `--verbose` shows it unfiltered.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = drop_native_log_lines(captured.read())
            if kept:
                os.write(2, kept)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with native log lines dropped, then gets out of the module's way."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The package sees its real loader (resource readers, reloads) while it runs.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with native_log_lines_dropped():
            self.loader.exec_module(module)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the first import of each QUIETED_MODULES package; removes itself when all are loaded."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in QUIETED_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if all(name == fullname or name in sys.modules for name in QUIETED_MODULES):
            sys.meta_path.remove(self)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec
