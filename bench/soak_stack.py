"""What `bench.soak` does to and reads from a `cxr cluster` stack: `cxr` subprocesses, new images, the
Prefect API (which stage a run is in), the state folder's latest manifest, and a stock MLflow client."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pandas as pd

from cxr import REGISTERED_MODEL_NAME
from cxr.data.demo_data import write_demo_dataset
from cxr.data.manifests import MANIFEST_NAME, QUARANTINE_NAME, latest_manifest_index
from cxr.registry.versions import CHAMPION_ALIAS

REPO = Path(__file__).resolve().parents[1]
CXR_TIMEOUT_S = 900  # a tiny run on the busy 2-core stack took 245-300 s (tests/pipeline/test_cluster.py)
POLL_S = 0.5


def cxr_env(home: Path, faults: str = "") -> dict[str, str]:
    """A `cxr` process's environment: the soak's state folder, nothing inherited that names a server."""
    inherited = ("PREFECT_", "MLFLOW_", "CXR_", "KERAS_HOME", "MPLCONFIGDIR")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(
        CXR_HOME=str(home), PYTHONPATH=path, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1"
    )
    if faults:
        env["CXR_FAULTS"] = faults
    return env


def start_cxr(home: Path, log: Path, *args: str, faults: str = "") -> subprocess.Popen:
    """Start `cxr ARGS`, its output in `log`.out/.err (files: a pipe nobody reads while a fault is injected
    could fill and stall the run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], cwd=REPO, env=cxr_env(home, faults),
            stdout=out, stderr=err, text=True,
        )  # fmt: skip


def finish(process: subprocess.Popen, log: Path) -> tuple[int, dict | None, str]:
    """(exit status, the last line's JSON or None, the last line of stderr: a failed command's error)."""
    process.wait(timeout=CXR_TIMEOUT_S)
    lines = log.with_suffix(".out").read_text().strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except ValueError:
        summary = None
    errors = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
    return process.returncode, summary, errors[-1] if errors else ""


def cxr(home: Path, log: Path, *args: str, faults: str = "") -> dict:
    """Run one `cxr ... --json` command to its end; its JSON, or a RuntimeError with its error."""
    status, summary, error = finish(start_cxr(home, log, *args, faults=faults), log)
    if status != 0 or summary is None:
        raise RuntimeError(f"cxr {' '.join(args)} exited {status}: {error}")
    return summary


def listening(ports: dict[str, int]) -> list[str]:
    """The names of the ports something still listens on (127.0.0.1)."""

    def open_(port: int) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return sorted(name for name, port in ports.items() if open_(port))


def new_soak_folder() -> tuple[Path, Path, Path]:
    """(parent, state folder, data folder): below a `mktemp -d` parent, mode 0700, as a container user has."""
    parent = Path(tempfile.mkdtemp(prefix="cxr-soak-"))
    return parent, parent / "home", parent / "data"


def remove_soak_folder(parent: Path, home: Path) -> None:
    """The soak's folders, and PostgreSQL's data folder where `up` placed it beside ~postgres (as root)."""
    data = (home / "cluster" / "postgres" / "data").resolve()
    shutil.rmtree(parent, ignore_errors=True)
    if not data.is_relative_to(parent):
        shutil.rmtree(data.parent, ignore_errors=True)


# Demo names start with the patient (person12_..., IM-0115-...): a cycle's own prefix keeps them apart.
_PATIENT = re.compile(r"^(person|IM-)(\d+)")


def add_images(data: Path, cycle: int, count: int, size: int) -> list[Path]:
    """New images arriving before `cycle`: `count` demo images of new patients and one unreadable file
    (which must land in the quarantine list). Returns the files added."""
    added = []
    with tempfile.TemporaryDirectory(prefix="soak-new-") as scratch:
        write_demo_dataset(Path(scratch), n=count, size=size, seed=1000 + cycle)
        for source in sorted(Path(scratch).rglob("*.jpeg")):
            name = _PATIENT.sub(lambda m: f"{m[1]}9{cycle:03d}{int(m[2]):04d}", source.name)
            target = data / source.parent.relative_to(scratch) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            added.append(target)
    broken = data / "train" / "NORMAL" / f"IM-9{cycle:03d}9999-0001.jpeg"
    broken.write_bytes(b"\xff\xd8 not a whole JPEG")
    return [*added, broken]


def images_lost(home: Path, data: Path) -> list[str]:
    """Files in `data` that are neither in the state folder's latest manifest of it nor in its quarantine list."""
    index = latest_manifest_index(home / "manifests", data)
    files = {str(path.resolve()) for path in data.rglob("*") if path.is_file()}
    if not index.is_file():
        return sorted(files)
    manifest = Path(index.read_text().strip())
    assert manifest.name == MANIFEST_NAME
    listed = [
        *pd.read_parquet(manifest, columns=["path"])["path"],
        *pd.read_csv(manifest.parent / QUARANTINE_NAME, usecols=["path"], keep_default_na=False)["path"],
    ]
    known = {str((data / path).resolve()) if not Path(path).is_absolute() else path for path in listed}
    return sorted(files - known)


class PrefectApi:
    """The stack's Prefect API with its credentials, for what the soak reads: runs and their stages."""

    def __init__(self, api_url: str, auth_header: dict[str, str]) -> None:
        self.api_url, self.auth_header = api_url, auth_header

    def post(self, path: str, body: dict) -> list | dict:
        request = urllib.request.Request(
            f"{self.api_url}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self.auth_header},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def task_run_ids(self, name: str) -> set[str]:
        return {run["id"] for run in self._task_runs(name)}

    def _task_runs(self, name: str) -> list[dict]:
        try:
            runs = self.post("/task_runs/filter", {"task_runs": {"name": {"like_": name}}, "limit": 200})
        except OSError:
            return []  # the server is restarting; ask again
        return [run for run in runs if run["name"].split("-")[0] == name]

    def wait_for_stage(self, name: str, known: set[str], process: subprocess.Popen) -> bool:
        """Wait until a task run `name` not in `known` has started (a short stage may have ended by the next
        poll); False when `process` ended first."""
        while process.poll() is None:
            if any(run["id"] not in known and run["start_time"] for run in self._task_runs(name)):
                return True
            time.sleep(POLL_S)
        return False

    def flow_run_state(self, flow_run_id: str) -> str | None:
        runs = self.post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return runs[0]["state_type"] if runs else None


def registry_view(tracking_uri: str, credentials: dict[str, str]) -> dict:
    """What a stock `MlflowClient` with the credentials from `cxr cluster status`'s files sees: versions per
    data digest, and whether the champion alias names a version that exists."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    os.environ["MLFLOW_TRACKING_USERNAME"] = credentials["mlflow_username"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = Path(credentials["mlflow_admin_password"]).read_text().strip()
    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    per_digest = Counter(version.tags.get("data_digest", "") for version in versions)
    try:
        champion = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, CHAMPION_ALIAS).version
    except MlflowException:
        champion = None
    numbers = {str(version.version) for version in versions}
    return {
        "versions": len(versions),
        "per_digest": dict(per_digest),
        "champion": champion,
        "champion_exists": (champion is None and not numbers) or str(champion) in numbers,
    }
