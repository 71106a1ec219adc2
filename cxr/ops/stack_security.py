"""The credentials of `cxr cluster`: each engine's own mechanism, every secret generated at the first `up`.

- Dask: mutual TLS (`distributed`'s Security). A CA made at `up` signs one certificate that the scheduler, the
  workers and every client present; the CA's key is not kept, so no further certificate can be signed. The
  scheduler's and workers' HTTP servers serve only their health probe.
- Prefect: the server's basic auth (`PREFECT_SERVER_API_AUTH_STRING`); clients send `PREFECT_API_AUTH_STRING`.
- MLflow: the tracking server's `basic-auth` app, user `admin` with a generated password; its user database is
  the PostgreSQL database `mlflow_auth`; clients send `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.

The secrets live in `cluster/secrets/` (mode 700, each file mode 600 from its first byte) and reach processes
through their environment, never their command line.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from pathlib import Path

from cxr.core.atomic_files import write_secret
from cxr.core.errors import CxrError

MLFLOW_ADMIN = "admin"
PREFECT_USER = "cxr"
CERT_DAYS = 3650
MLFLOW_AUTH_DATABASE = "mlflow_auth"
# Files of `cluster/secrets/`, by the name `cxr cluster status --json` gives them.
FILES = {
    "prefect_auth_string": "prefect-auth",  # USER:PASSWORD
    "mlflow_admin_password": "mlflow-admin-password",
    "mlflow_flask_secret_key": "mlflow-flask-secret-key",
    "mlflow_auth_config": "mlflow-auth.ini",
    "dask_tls_ca_file": "dask-ca.pem",
    "dask_tls_cert": "dask-cert.pem",
    "dask_tls_key": "dask-key.pem",
}
# Only the health probe answers on the Dask HTTP ports (no dashboard, no info pages): they check no certificate.
DASK_HTTP = '["distributed.http.health"]'
AUTH_INSTALL_HINT = (
    "MLflow's basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' (the `cluster` extra)"
)


def secrets_dir(cluster_dir: Path) -> Path:
    return cluster_dir / "secrets"


def files(cluster_dir: Path) -> dict[str, str]:
    """name -> path of every credential file (what a client on another machine copies), no secret."""
    return {name: str(secrets_dir(cluster_dir) / file) for name, file in FILES.items()}


def credentials(cluster_dir: Path) -> dict[str, str]:
    """What `cxr cluster status --json` shows under `credentials`: every file a client may need, PostgreSQL's
    password (`cxr.ops.postgres`) included, and MLflow's user name."""
    postgres_password = str(cluster_dir / "postgres" / "password")
    return {**files(cluster_dir), "postgres_password": postgres_password, "mlflow_username": MLFLOW_ADMIN}


def _read(cluster_dir: Path, name: str) -> str:
    return (secrets_dir(cluster_dir) / FILES[name]).read_text().strip()


def ensure_secrets(cluster_dir: Path, database_url: str) -> None:
    """Generate each missing secret (all of them at the first `up`); rewrite MLflow's auth config."""
    folder = secrets_dir(cluster_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    generated = {
        "prefect_auth_string": lambda: f"{PREFECT_USER}:{secrets.token_urlsafe(24)}",
        "mlflow_admin_password": lambda: secrets.token_urlsafe(24),
        "mlflow_flask_secret_key": lambda: secrets.token_hex(32),
    }
    for name, make in generated.items():
        if not (folder / FILES[name]).exists():
            write_secret(folder / FILES[name], make())
    if not all(
        (folder / FILES[name]).exists() for name in ("dask_tls_ca_file", "dask_tls_cert", "dask_tls_key")
    ):
        _make_certificates(folder)
    # The auth database's URL holds PostgreSQL's password, which a new data folder renews: written at every `up`.
    config = (
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {database_url}\nadmin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    write_secret(folder / FILES["mlflow_auth_config"], config)


def _make_certificates(folder: Path) -> None:
    """A CA (its key discarded) and one certificate it signs for every member of the stack (127.0.0.1)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxr cluster CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

    def builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    member = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxr cluster")]), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(folder / FILES["dask_tls_key"], key_pem)
    write_secret(folder / FILES["dask_tls_cert"], member.public_bytes(pem))
    write_secret(folder / FILES["dask_tls_ca_file"], ca.public_bytes(pem))


def check_installed() -> None:
    """Raise CxrError before anything starts when MLflow's basic-auth app cannot load."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise CxrError(AUTH_INSTALL_HINT)


def dask_tls_args(cluster_dir: Path) -> list[str]:
    """The `dask scheduler` / `dask worker` options of the stack's certificate (paths, no secret)."""
    paths = files(cluster_dir)
    return [
        "--tls-ca-file", paths["dask_tls_ca_file"],
        "--tls-cert", paths["dask_tls_cert"],
        "--tls-key", paths["dask_tls_key"],
    ]  # fmt: skip


def dask_security(cluster_dir: Path):  # noqa: ANN201 - distributed.Security (imported lazily)
    """A `distributed.Security` presenting the stack's certificate, for this process's own clients."""
    from distributed import Security

    paths = files(cluster_dir)
    return Security(
        tls_ca_file=paths["dask_tls_ca_file"],
        tls_client_cert=paths["dask_tls_cert"],
        tls_client_key=paths["dask_tls_key"],
        require_encryption=True,
    )


def client_env(cluster_dir: Path) -> dict[str, str]:
    """The variables with which Prefect, MLflow and Dask clients authenticate to the stack."""
    paths = files(cluster_dir)
    return {
        "PREFECT_API_AUTH_STRING": _read(cluster_dir, "prefect_auth_string"),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_TRACKING_PASSWORD": _read(cluster_dir, "mlflow_admin_password"),
        # distributed's configuration: every Client made without an explicit Security uses these.
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": paths["dask_tls_ca_file"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": paths["dask_tls_cert"],
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": paths["dask_tls_key"],
    }


def dask_server_env() -> dict[str, str]:
    """The Dask scheduler's and workers' HTTP servers serve their health probe only (no dashboard, no info)."""
    return {
        "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": DASK_HTTP,
        "DASK_DISTRIBUTED__WORKER__HTTP__ROUTES": DASK_HTTP,
    }


def prefect_server_env(cluster_dir: Path) -> dict[str, str]:
    return {"PREFECT_SERVER_API_AUTH_STRING": _read(cluster_dir, "prefect_auth_string")}


def mlflow_server_env(cluster_dir: Path) -> dict[str, str]:
    """The basic-auth app's config file, CSRF key and (read once, to create `admin`) the admin's password."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": files(cluster_dir)["mlflow_auth_config"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _read(cluster_dir, "mlflow_flask_secret_key"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": _read(cluster_dir, "mlflow_admin_password"),
    }


def prefect_auth_header(cluster_dir: Path) -> dict[str, str]:
    """The `Authorization` header of a plain HTTP request to the stack's Prefect API."""
    token = base64.b64encode(_read(cluster_dir, "prefect_auth_string").encode()).decode()
    return {"Authorization": f"Basic {token}"}
