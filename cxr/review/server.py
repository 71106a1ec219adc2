"""The state folder's Label Studio server (`cxr review up | down`): the reviewers' labelling tool.

Label Studio runs from its own virtual environment (`make install-review`: `.venv-review/`), so its pins
never touch the project's. It listens on 127.0.0.1 with its data in `$CXR_HOME/review/label-studio/`.
The admin user's password and the API token are generated once and kept in files of mode 600 (created
with that mode, never widened); they reach Label Studio through its environment, never a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import httpx

from cxr.core.errors import CxrError
from cxr.core.locking import file_lock
from cxr.ops.server import free_port, stop_process_group
from cxr.review.queue import review_dir

HOST = "127.0.0.1"
ADMIN_EMAIL = "admin@cxr.local"
# Where `make install-review` puts Label Studio; $CXR_LABEL_STUDIO names another `label-studio` program.
REVIEW_VENV = Path(__file__).resolve().parents[2] / ".venv-review"
LABEL_STUDIO_ENV = "CXR_LABEL_STUDIO"
# A first start creates its database (about a minute on a busy 2-core machine); later ones take seconds.
START_TIMEOUT_S = 300.0


# Label Studio reports errors (its server's and the reviewers' browsers') to its vendor's Sentry unless
# these DSNs are empty. It reads LABEL_STUDIO_NAME before NAME, so the prefixed names win over any setting.
NO_ERROR_REPORTS = {"LABEL_STUDIO_SENTRY_DSN": "", "LABEL_STUDIO_FRONTEND_SENTRY_DSN": ""}


class ReviewServerError(CxrError):
    """Label Studio is not installed, does not start, or does not answer."""


def label_studio_program() -> Path | None:
    """The `label-studio` program to run, or None when it is not installed."""
    named = os.environ.get(LABEL_STUDIO_ENV)
    program = Path(named) if named else REVIEW_VENV / "bin" / "label-studio"
    return program if program.is_file() and os.access(program, os.X_OK) else None


def token_file() -> Path:
    return review_dir() / "token"


def _server_file() -> Path:
    return review_dir() / "server.json"


def log_file() -> Path:
    return review_dir() / "label-studio.log"


def _secret(path: Path, make: str) -> str:
    """The secret in `path`, generated the first time: the file has mode 600 from its first byte."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(handle, "w") as out:
        out.write(make + "\n")
    return make


def read_token() -> str:
    return _secret(token_file(), secrets.token_hex(20))


def running() -> dict | None:
    """The server's record (url, pid, port, log) when its process is alive, else None."""
    try:
        record = json.loads(_server_file().read_text())
    except (OSError, ValueError):
        return None
    try:  # alive, and Label Studio (not a process that took the pid of one that died)
        alive = b"label-studio" in Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    except OSError:
        return None
    return record if alive else None


def answers(url: str, token: str, timeout_s: float = 5.0) -> bool:
    """Whether Label Studio at `url` accepts `token` on its REST API."""
    try:
        response = httpx.get(f"{url}/api/projects", headers=auth(token), timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def up(timeout_s: float = START_TIMEOUT_S) -> dict:
    """Start Label Studio (or reuse the running one, or wait for one starting); its url, pid and log once
    its API answers. Two `up`s at once start one server."""
    token = read_token()
    with file_lock(review_dir() / "server.lock", timeout_s=timeout_s):
        record = running() or _start(token)
        deadline = time.monotonic() + timeout_s
        while not answers(record["url"], token):
            if running() is None or time.monotonic() > deadline:
                stop_process_group(record["pid"])
                _server_file().unlink(missing_ok=True)
                raise ReviewServerError(f"Label Studio did not start; see {log_file()}")
            time.sleep(1.0)
    return record


def label_studio_environment(password: str, token: str, data: Path) -> dict[str, str]:
    """Label Studio's environment: this process's, with the admin user, token, data folder and settings
    that keep it local (no version check, analytics or error reports leave the machine)."""
    return {
        **os.environ,
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LATEST_VERSION_CHECK": "false",  # no call to pypi.org on every start
        "COLLECT_ANALYTICS": "false",
        "DISABLE_SIGNUP_WITHOUT_LINK": "true",  # reviewers are invited by the admin, nobody signs up alone
        **NO_ERROR_REPORTS,
        # Tasks show the queue's own image copies (cxr.review.sync.task_of), served from the state folder.
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(review_dir()),
    }


def _start(token: str) -> dict:
    """Spawn Label Studio detached (its own session: it outlives this command); its record."""
    program = label_studio_program()
    if program is None:
        raise ReviewServerError(
            f"Label Studio is not installed: run `make install-review` (or set ${LABEL_STUDIO_ENV})"
        )
    password = _secret(review_dir() / "admin-password", secrets.token_urlsafe(18))
    data = review_dir() / "label-studio"
    data.mkdir(mode=0o700, exist_ok=True)
    data.chmod(0o700)  # its database holds the API token in plain text (and the reviewers' answers)
    port = free_port(HOST)
    env = label_studio_environment(password, token, data)
    command = [str(program), "start", "--no-browser", "--internal-host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data), "--enable-legacy-api-token"]
    with log_file().open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    record = {"url": f"http://{HOST}:{port}", "port": port, "pid": process.pid, "log": str(log_file())}
    _server_file().write_text(json.dumps(record))  # before waiting: `down` can stop a half-started server
    return record


def down() -> bool:
    """Stop the server (its whole process group); False when none was running."""
    record = running()
    _server_file().unlink(missing_ok=True)
    if record is None:
        return False
    stop_process_group(record["pid"])
    return True


def connection() -> tuple[str, str]:
    """(url, token) of the running server; a clear error when it is down."""
    record = running()
    token = read_token()
    if record is None or not answers(record["url"], token):
        raise ReviewServerError("Label Studio is not running or not answering: start it with `cxr review up`")
    return record["url"], token
