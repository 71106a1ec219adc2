"""Import cost: a fully cached `cxr train` rerun must not pay for TensorFlow, Keras, sklearn or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "sklearn", "mlflow", "matplotlib")


@pytest.mark.parametrize("module", ["flows.retrain", "cli.main"])
def test_importing_the_pipeline_loads_no_heavy_library(module: str) -> None:
    # A fresh interpreter: this test process has long imported all of them.
    code = f"import {module}, json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_cli_help_loads_no_heavy_library() -> None:
    # Building the parser (choices from cxr.architectures, defaults from cxr.watch) must stay light too.
    code = (
        "import json, sys\nfrom cli.main import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: cxr train" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
