"""The stack's credentials: secret files private from their first byte, certificates a CA signed, PostgreSQL's
data folder placed where its user can reach it (as root), the webhook URL kept out of sight."""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import stat
import tempfile
from pathlib import Path

import pytest

from cxr.core.atomic_files import write_secret
from cxr.core.errors import CxrError
from cxr.ops import postgres, stack_security
from cxr.ops.notify import masked_url, webhook_block

AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not postgres.is_available(), reason="needs root, runuser and PostgreSQL's user"
)


def test_a_secret_is_mode_600_even_under_an_open_umask(tmp_path):
    old = os.umask(0)
    try:
        path = write_secret(tmp_path / "s" / "token", "abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "abc"
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary left beside it


def test_secrets_are_generated_once_private_and_named_not_shown(tmp_path):
    stack_security.ensure_secrets(tmp_path, "postgresql://cxr:pw@127.0.0.1:1/mlflow_auth")
    folder = stack_security.secrets_dir(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = stack_security.files(tmp_path)
    assert all(stat.S_IMODE(Path(path).stat().st_mode) == 0o600 for path in files.values())
    before = {name: Path(path).read_bytes() for name, path in files.items()}
    stack_security.ensure_secrets(tmp_path, "postgresql://cxr:pw@127.0.0.1:1/mlflow_auth")
    assert {name: Path(path).read_bytes() for name, path in files.items()} == before  # kept, not renewed
    secrets = stack_security.client_env(tmp_path)
    user, password = secrets["PREFECT_API_AUTH_STRING"].split(":")
    assert user == stack_security.PREFECT_USER and len(password) >= 32
    assert secrets["MLFLOW_TRACKING_PASSWORD"] != password
    assert not any(password in path or secrets["MLFLOW_TRACKING_PASSWORD"] in path for path in files.values())
    assert "admin_password" not in before["mlflow_auth_config"].decode()  # it reaches the server by env only


def test_the_certificate_is_signed_by_the_stacks_ca_and_loads_for_tls(tmp_path):
    from cryptography import x509

    stack_security.ensure_secrets(tmp_path, "postgresql://x")
    files = stack_security.files(tmp_path)
    ca = x509.load_pem_x509_certificate(Path(files["dask_tls_ca_file"]).read_bytes())
    member = x509.load_pem_x509_certificate(Path(files["dask_tls_cert"]).read_bytes())
    member.verify_directly_issued_by(ca)
    # Both ends of a mutual TLS connection accept them (what distributed's Security builds).
    for purpose in (ssl.Purpose.SERVER_AUTH, ssl.Purpose.CLIENT_AUTH):
        context = ssl.create_default_context(purpose, cafile=files["dask_tls_ca_file"])
        context.load_cert_chain(files["dask_tls_cert"], files["dask_tls_key"])
    assert stack_security.dask_security(tmp_path).require_encryption


@AS_ROOT
def test_as_root_the_data_folder_moves_where_postgres_can_reach_it():
    parent = Path(tempfile.mkdtemp())  # mode 0700, root's: the `postgres` user cannot enter it
    server = postgres.Postgres(parent / "home" / "cluster" / "postgres", 5432)
    server.root.mkdir(parents=True)
    try:
        assert postgres.server_user(server) == postgres.SYSTEM_USER
        postgres._place_data_folder(server)
        assert (server.root / "data").is_symlink()
        assert not server.data_dir.is_relative_to(parent)
        assert server.log_path.parent == server.data_dir.parent
        assert postgres._can_enter(postgres.SYSTEM_USER, server.data_dir.parent)
    finally:
        outside = server.data_dir.parent
        shutil.rmtree(parent)
        shutil.rmtree(outside, ignore_errors=True)


def _nobodys_state_folder() -> tuple[Path, postgres.Postgres]:
    """(a temporary parent anyone may enter, the server of a state folder inside it owned by `nobody`)."""
    parent = Path(tempfile.mkdtemp())
    parent.chmod(0o755)
    home = parent / "home"
    home.mkdir()
    shutil.chown(home, "nobody")
    return parent, postgres.Postgres(home / "cluster" / "postgres", 5432)


@AS_ROOT
def test_as_root_a_users_state_folder_keeps_the_data_inside_and_theirs():
    parent, server = _nobodys_state_folder()
    server.root.mkdir(parents=True)  # made by root, as `cxr cluster up` does
    try:
        assert postgres.server_user(server) == "nobody"
        postgres._place_data_folder(server)
        assert not (server.root / "data").is_symlink()
        assert server.data_dir == server.root / "data"
    finally:
        shutil.rmtree(parent)


@AS_ROOT
def test_as_root_initdb_runs_as_the_owner_of_a_users_state_folder():
    """The data folder root makes is handed to the state folder's owner, not to `postgres` (whom
    `server_user` would name once root's fresh folder exists), and by ids: `nobody`'s group is `nogroup`."""
    parent, server = _nobodys_state_folder()
    try:
        postgres.initialise(server)  # initdb only: no server starts
        assert server.data_dir.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert (server.data_dir / "PG_VERSION").is_file()
        assert postgres.server_user(server) == "nobody"
        assert not (server.data_dir.parent / ".initdb-password").exists()
    finally:
        shutil.rmtree(parent)


@AS_ROOT
def test_as_root_a_state_folder_of_a_user_who_cannot_enter_it_fails_with_what_to_do():
    parent = Path(tempfile.mkdtemp())  # root's, mode 0700
    home = parent / "home"
    home.mkdir()
    shutil.chown(home, "nobody")  # a user's state folder below a parent that user cannot enter
    server = postgres.Postgres(home / "cluster" / "postgres", 5432)
    try:
        assert postgres.server_user(server) == "nobody"
        with pytest.raises(CxrError, match=r"cannot enter .*chmod o\+x.*CXR_HOME.*other than root"):
            postgres._place_data_folder(server)
    finally:
        shutil.rmtree(parent)


def test_the_webhook_url_lives_in_the_blocks_secret_field_and_prints_masked():
    url = "https://hooks.example.org/services/T0/B0/s3cr3tt0ken?sig=abc"
    block = webhook_block(url)
    assert "s3cr3tt0ken" not in block.url
    assert "s3cr3tt0ken" not in str(block.model_dump())  # what is shown or logged of the block
    assert block._build_request_args(body="b", subject="s")["url"] == url  # what is posted
    assert masked_url(url) == "https://hooks.example.org/***"
    with pytest.raises(CxrError) as refused:
        webhook_block("ftp://hooks.example.org/s3cr3tt0ken")
    assert "s3cr3tt0ken" not in str(refused.value)
    with pytest.raises(CxrError, match="http"):  # a port that is no number: the same clear refusal
        webhook_block("ftp://hooks.example.org:99999999/s3cr3tt0ken")


def test_up_and_down_take_turns_on_the_state_folders_lock(tmp_path, monkeypatch):
    import subprocess
    import sys

    from cxr.core.locking import LockTimeout
    from cxr.ops import cluster

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setattr(cluster, "LOCK_TIMEOUT_S", 0.5)
    lock = cluster.cluster_dir() / "cluster.lock"
    holder = subprocess.Popen(  # another `cxr cluster up`, still at work
        [sys.executable, "-c", f"from pathlib import Path\nfrom cxr.core.locking import file_lock\nwith file_lock(Path({str(lock)!r})):\n print(1, flush=True)\n input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(LockTimeout, match=f"pid {holder.pid}"):
            cluster.down()
    finally:
        holder.communicate("\n", timeout=30)
    assert cluster.down() == {"stopped": []}  # the lock is free again


def test_a_service_that_dies_while_starting_is_named_with_the_end_of_its_log(tmp_path, monkeypatch):
    import subprocess
    import sys
    import time

    from cxr.ops import cluster

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    log = cluster.cluster_dir() / "logs" / "prefect-server.log"
    log.parent.mkdir(parents=True)
    log.write_text("starting\nERROR: [Errno 98] address already in use\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # the server's process, already gone
    dead.wait()
    endpoints = {"pids": {"prefect-server": dead.pid}}
    with pytest.raises(
        CxrError, match=r"prefect-server exited while starting \(.*\): .*address already in use"
    ):
        cluster._wait_ready("prefect-server", lambda: False, endpoints, time.monotonic() + 5)
