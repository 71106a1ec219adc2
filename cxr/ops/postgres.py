"""A PostgreSQL server of the project's own: Debian's binaries, a data folder in the state folder, no service.

`initdb` creates it once (superuser `cxr` with a generated password, scram-sha-256 only), `pg_ctl` starts
and stops it. It listens on 127.0.0.1 only, with no unix socket, so every client logs in with the password.
PostgreSQL refuses to run as root: as root, the data folder belongs to Debian's `postgres` user and the
binaries run as that user (the state folder's parents must let it through).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
HBA = "# TYPE  DATABASE  USER  ADDRESS       METHOD\nhost    all       all   127.0.0.1/32  scram-sha-256\n"


@dataclass(frozen=True)
class Postgres:
    """Where one server lives and how clients reach it."""

    root: Path  # holds `data/`, `password` and `postgres.log`
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

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
    """True when the PostgreSQL binaries (and, as root, the `postgres` user) are installed."""
    try:
        bin_dir()
    except CxrError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None and _system_user_exists()


def _system_user_exists() -> bool:
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return False
    return True


def _run(*command: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL binary, as `postgres` when we are root; raise CxrError with its output on failure."""
    argv = [str(bin_dir() / command[0]), *command[1:]]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
    # From "/": the `postgres` user may not be allowed into the caller's working folder.
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/")
    if result.returncode != 0:
        raise CxrError(f"{command[0]} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


def _own(path: Path) -> None:
    """Hand `path` to the `postgres` user when we are root (PostgreSQL checks its data folder's owner)."""
    if os.geteuid() == 0:
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)


def initialise(server: Postgres) -> None:
    """Create the data folder once, with the superuser's generated password and loopback-only settings."""
    if (server.data_dir / "PG_VERSION").exists():
        return
    server.root.mkdir(parents=True, exist_ok=True)
    secret = server.root / "password"
    secret.write_text(secrets.token_urlsafe(24))
    secret.chmod(0o600)
    if server.data_dir.exists():
        shutil.rmtree(server.data_dir)  # a half-made folder from an interrupted initdb
    server.data_dir.mkdir(mode=0o700)
    _own(server.data_dir)
    pwfile = server.root / ".initdb-password"  # readable by the server's user only, removed at once
    pwfile.write_text(server.password)
    pwfile.chmod(0o600)
    _own(pwfile)
    try:
        _run("initdb", "-D", str(server.data_dir), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256")
    finally:
        pwfile.unlink(missing_ok=True)
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(SETTINGS)
    (server.data_dir / "pg_hba.conf").write_text(HBA)


def is_running(server: Postgres) -> bool:
    if not (server.data_dir / "PG_VERSION").exists():
        return False
    try:
        _run("pg_ctl", "status", "-D", str(server.data_dir))
    except CxrError:
        return False
    return True


def start(server: Postgres) -> None:
    """Start the server on `server.port` (127.0.0.1) and wait until it accepts connections."""
    if is_running(server):
        return
    if not server.log_path.exists():
        server.log_path.touch()
        _own(server.log_path)
    _run(
        "pg_ctl", "start", "-D", str(server.data_dir), "-l", str(server.log_path),
        "-w", "-t", str(START_TIMEOUT_S), "-o", f"-p {server.port}",
    )  # fmt: skip


def stop(server: Postgres) -> None:
    """Fast shutdown: open sessions are closed, the data is consistent."""
    if is_running(server):
        _run("pg_ctl", "stop", "-D", str(server.data_dir), "-m", "fast", "-w")


def ensure_databases(server: Postgres, *names: str) -> None:
    """Create each database that does not exist yet."""
    import psycopg
    from psycopg import sql

    # CREATE DATABASE cannot run in a transaction.
    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        for name in names:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
