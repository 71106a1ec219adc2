"""A PostgreSQL server of the project's own: Debian's binaries, a data folder in the state folder, no service.

`initdb` creates it once (superuser `cxr` with a generated password, scram-sha-256 only), `pg_ctl` starts
and stops it. It listens on 127.0.0.1 only, with no unix socket, so every client logs in with the password.
PostgreSQL refuses to run as root. As root it runs as the state folder's owner when that is not root, else as
Debian's `postgres` user; the data folder belongs to that user. When that user cannot enter the state folder (a
0700 parent such as a container's /root or a `mktemp -d` folder), the data folder and its log live in
`~postgres/cxr/<key>/` instead and `cluster/postgres/data` is a link there; the password stays in the state folder.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cxr.core.atomic_files import write_secret
from cxr.core.errors import CxrError

USER = "cxr"
SYSTEM_USER = "postgres"  # Debian's package creates it
START_TIMEOUT_S = 60
INSTALL_HINT = "install PostgreSQL first: `make install-cluster` (Debian's postgresql package)"
SETTINGS = """
# Written by cxr (cxr/ops/postgres.py): loopback TCP with passwords only.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
max_connections = 200
"""
# How the Prefect server uses this server. Prefect's defaults (a pool of 5 plus 10 overflow connections, closed
# again after each use; 5 s to connect) make it open a connection (a new backend and a SCRAM handshake) for most
# requests under load, and on a busy machine asyncpg's connect then times out: a plain TimeoutError, which
# the server answers with HTTP 500 instead of a 503 its clients retry. A pool that keeps its connections
# and a longer connect timeout remove both; 40 connections stay well under `max_connections`.
PREFECT_SERVER_DATABASE_ENV = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "30",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "10",
    "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
}
HBA = "# TYPE  DATABASE  USER  ADDRESS       METHOD\nhost    all       all   127.0.0.1/32  scram-sha-256\n"


@dataclass(frozen=True)
class Postgres:
    """Where one server lives and how clients reach it."""

    root: Path  # holds `password` and `data/` (or a link to it where the server's user cannot enter `root`)
    port: int

    @property
    def data_dir(self) -> Path:
        """The real data folder (the link resolved: the server's user may not be able to follow it)."""
        return (self.root / "data").resolve()

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    @property
    def password(self) -> str:
        return (self.root / "password").read_text().strip()

    def url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of `database` (driver `postgresql+asyncpg` for Prefect)."""
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def public_url(self) -> str:
        """The server without its password, for people to read."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}"


def bin_dir() -> Path:
    """The folder of `pg_ctl` and `initdb`: on PATH, else the newest of Debian's /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise CxrError(f"PostgreSQL's pg_ctl not found: {INSTALL_HINT}")
    return versions[-1].parent


def is_available() -> bool:
    """True when the PostgreSQL binaries (and, as root, `runuser` and the `postgres` user) are installed."""
    try:
        bin_dir()
    except CxrError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None and _user_exists(SYSTEM_USER)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _owner(path: Path) -> int:
    """The owner of `path`, or of its nearest existing parent."""
    while not path.exists():
        path = path.parent
    return path.stat().st_uid


def server_user(server: Postgres) -> str | None:
    """Whom the server runs as: None (this process's user) unless we are root, which PostgreSQL refuses.

    As root: the data folder's owner once it exists; before that the state folder's owner when that is not
    root (their files stay theirs), else Debian's `postgres`.
    """
    if os.geteuid() != 0:
        return None
    data = server.root / "data"
    state_folder = server.root.parents[
        1
    ]  # $CXR_HOME: `root` is its cluster/postgres, maybe made by root just now
    uid = data.stat().st_uid if data.exists() else _owner(state_folder)
    return SYSTEM_USER if uid == 0 else pwd.getpwuid(uid).pw_name


def _can_enter(user: str | None, folder: Path) -> bool:
    """True when `user` may reach `folder` (search permission on it and on every parent)."""
    if user is None:
        return os.access(folder, os.X_OK)
    check = ["runuser", "-u", user, "--", "test", "-x", str(folder)]
    return subprocess.run(check, capture_output=True, stdin=subprocess.DEVNULL, cwd="/").returncode == 0


def _run(server: Postgres, *command: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL binary as the server's user; raise CxrError with its output on failure."""
    argv = [str(bin_dir() / command[0]), *command[1:]]
    user = server_user(server)
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    # From "/": the server's user may not be allowed into the caller's working folder.
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/")
    if result.returncode != 0:
        raise CxrError(f"{command[0]} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


def _own(user: str | None, path: Path) -> None:
    """Hand `path` to the server's `user` and that user's group (PostgreSQL checks its data folder's owner);
    None: this process's user keeps it. By ids: a user's group need not bear their name (`nobody`)."""
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(path, account.pw_uid, account.pw_gid)


def _place_data_folder(server: Postgres) -> None:
    """Where the server's user cannot enter `server.root`, make `root/data` a link into `~postgres/cxr/`."""
    link = server.root / "data"
    user = server_user(server)
    if link.is_symlink() or _can_enter(user, server.root):
        return
    outside = Path(pwd.getpwnam(SYSTEM_USER).pw_dir) / "cxr"
    if user != SYSTEM_USER or not _can_enter(user, outside.parent):
        raise CxrError(
            f"PostgreSQL refuses to run as root and runs as `{user}`, which cannot enter {server.root}: "
            f"let it through each parent folder (`chmod o+x`), set CXR_HOME to a folder it may enter, "
            "or run `cxr cluster` as a user other than root"
        )
    key = hashlib.sha256(str(server.root.resolve()).encode()).hexdigest()[:16]
    for folder in (outside, outside / key):
        folder.mkdir(mode=0o700, exist_ok=True)
        _own(user, folder)
    if link.exists():
        shutil.rmtree(link)  # a half-made folder from an interrupted initdb
    link.symlink_to(outside / key / "data", target_is_directory=True)


def initialise(server: Postgres) -> None:
    """Create the data folder once, with the superuser's generated password and loopback-only settings."""
    if (server.data_dir / "PG_VERSION").exists():
        return
    server.root.mkdir(parents=True, exist_ok=True)
    write_secret(server.root / "password", secrets.token_urlsafe(24))
    _place_data_folder(server)
    if server.data_dir.exists():
        shutil.rmtree(server.data_dir)  # a half-made folder from an interrupted initdb
    # Asked before the folder exists: made by root, it would be root's, and `server_user` would then answer
    # `postgres` instead of the state folder's owner.
    user = server_user(server)
    server.data_dir.mkdir(mode=0o700)
    _own(user, server.data_dir)
    # Beside the data folder, where the server's user can read it; mode 600 from its first byte, removed at once.
    pwfile = write_secret(server.data_dir.parent / ".initdb-password", server.password)
    _own(user, pwfile)
    try:
        _run(
            server,
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(SETTINGS)
    (server.data_dir / "pg_hba.conf").write_text(HBA)


def is_running(server: Postgres) -> bool:
    if not (server.data_dir / "PG_VERSION").exists():
        return False
    try:
        _run(server, "pg_ctl", "status", "-D", str(server.data_dir))
    except CxrError:
        return False
    return True


def start(server: Postgres) -> None:
    """Start the server on `server.port` (127.0.0.1) and wait until it accepts connections."""
    if is_running(server):
        return
    if not server.log_path.exists():
        server.log_path.touch()
        _own(server_user(server), server.log_path)
    _run(
        server, "pg_ctl", "start", "-D", str(server.data_dir), "-l", str(server.log_path),
        "-w", "-t", str(START_TIMEOUT_S), "-o", f"-p {server.port}",
    )  # fmt: skip


def stop(server: Postgres) -> None:
    """Fast shutdown: open sessions are closed, the data is consistent."""
    if is_running(server):
        _run(server, "pg_ctl", "stop", "-D", str(server.data_dir), "-m", "fast", "-w")


def ensure_databases(server: Postgres, *names: str) -> None:
    """Create each database that does not exist yet."""
    import psycopg
    from psycopg import sql

    # CREATE DATABASE cannot run in a transaction.
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        for name in names:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
