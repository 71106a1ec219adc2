"""A Python that has this venv's installed packages but cannot import this repository.

The project is installed editable: a `.pth` hook in the venv's site-packages maps `cxr`, `tasks`...
to the repository. A throwaway venv whose own `.pth` only lists that site-packages folder sees every
installed package, but Python processes `.pth` files only in its own site folders, so the hook never
runs. Scripts run from a temporary folder, so the working directory adds nothing either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO_PACKAGES = ("cxr", "tasks", "flows", "deployments", "bench", "cli")
# Run first by every isolated script: fails loudly if the repository leaks in.
ISOLATION_CHECK = (
    "import importlib.util\n"
    f"leaked = [name for name in {REPO_PACKAGES!r} if importlib.util.find_spec(name) is not None]\n"
    "assert not leaked, f'repository packages importable: {leaked}'\n"
)
# Console scripts MLflow runs by name (`mlflow models serve` starts `uvicorn` from PATH); each checks
# isolation before it starts, so a server whose workers could import the repository never comes up.
CONSOLE_SCRIPTS = {"mlflow": "mlflow.cli:cli", "uvicorn": "uvicorn.main:main"}


def isolated_python(root: Path) -> Path:
    """Create the venv at `root` (no pip, well under a second); returns its `python`."""
    venv.EnvBuilder(with_pip=False).create(root)
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.joinpath("installed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = root / "bin" / "python"
    for name, target in CONSOLE_SCRIPTS.items():
        module, function = target.split(":")
        script = root / "bin" / name
        script.write_text(
            f"#!{python}\n{ISOLATION_CHECK}import sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        script.chmod(0o755)
    return python


def isolated_env(python: Path, home: Path) -> dict[str, str]:
    """A minimal environment: the isolated venv first on PATH, no PYTHONPATH, quiet TensorFlow."""
    return {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": str(home),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def run_isolated(python: Path, script: str, *args: str, cwd: Path, timeout: float = 240) -> str:
    """Run `script` (after ISOLATION_CHECK) in `cwd`; returns stdout, raises with stderr on failure."""
    path = cwd / "isolated_script.py"
    path.write_text(ISOLATION_CHECK + script)
    done = subprocess.run(
        [str(python), str(path), *args],
        cwd=cwd,
        env=isolated_env(python, cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"isolated script failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout
