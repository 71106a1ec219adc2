"""Import cost: importing the pipeline, or building the CLI's parser, loads no heavy library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "sklearn", "mlflow", "matplotlib")


def _heavy_loaded_after(code: str) -> tuple[list[str], str]:
    """Run `code` in a fresh interpreter (this test process has long imported them all); the heavy
    libraries it loaded, and what it printed before."""
    listing = f"import json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{listing}"],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=True,
    )
    *before, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(before)


@pytest.mark.parametrize("module", ["flows.retrain", "cli.main"])
def test_importing_the_pipeline_loads_no_heavy_library(module: str) -> None:
    assert _heavy_loaded_after(f"import {module}") == ([], "")


def test_cli_help_loads_no_heavy_library() -> None:
    # Building the parser (choices from cxr.config.architectures, defaults from cxr.ops.watch) must stay light too.
    code = "from cli.main import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass"
    loaded, printed = _heavy_loaded_after(code)
    assert "usage: cxr train" in printed
    assert loaded == []
