"""Local stack processes: MinIO (S3) and FerretDB (MongoDB wire protocol on SQLite).

Used by `make run` (scripts/run.py) and by the test fixtures. Each server keeps its data and
its log file under the ``state_dir`` it is given and listens on 127.0.0.1 only.
Binaries come from ``.state/bin/`` (made by scripts/install_services.sh, see
:func:`ensure_binaries`).

MinIO credentials are fixed local defaults (``MINIO_ROOT_USER``/``MINIO_ROOT_PASSWORD`` below,
overridable per instance): the server only listens on loopback and holds test data, and a
fixed pair lets a developer point ``aws``/``mc`` at a running ``make run`` without looking it up.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from scripts.procs import REPO_ROOT, ServerError, ServerProcess, free_port  # noqa: F401  (scripts/procs.py)

BIN_DIR = REPO_ROOT / ".state" / "bin"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_services.sh"

MINIO_ROOT_USER = "llmfn-local"
MINIO_ROOT_PASSWORD = "llmfn-local-secret"


class ServiceError(ServerError):
    """A local service could not be installed, started or did not become ready."""


def ensure_binaries(bin_dir: Path = BIN_DIR, timeout_s: float = 1800.0) -> Path:
    """Run install_services.sh unless minio and ferretdb are already in ``bin_dir``."""
    if all((bin_dir / name).exists() for name in ("minio", "ferretdb")):
        return bin_dir
    if bin_dir != BIN_DIR:
        raise ServiceError(f"minio/ferretdb missing in {bin_dir}")
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], timeout=timeout_s,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"{INSTALL_SCRIPT} failed ({result.returncode}):\n{result.stderr}")
    return bin_dir


class _Service(ServerProcess):
    """A binary of ``bin_dir`` with its data and log under ``state_dir``; it dies with us."""

    name = "server"
    ready_deadline_s = 30.0
    stop_grace_s = 10.0

    def __init__(self, state_dir: str | os.PathLike, host: str, port: int,
                 bin_dir: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None):
        self.state_dir = Path(state_dir)
        self.bin_dir = Path(bin_dir) if bin_dir else BIN_DIR
        super().__init__(port=port, host=host, die_with_parent=True,
                         log_path=log_path or self.state_dir / f"{self.name}.log")

    @property
    def binary(self) -> Path:
        return self.bin_dir / self.name

    def start(self) -> _Service:
        """Start the process (returns at once; call :meth:`wait_ready`)."""
        if self.running:
            return self
        if not self.binary.exists():
            raise ServiceError(f"{self.binary} not found: run scripts/install_services.sh")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return super().start()


class MinioServer(_Service):
    """MinIO single-drive server; S3 API at :attr:`endpoint_url`."""

    name = "minio"
    ready_path = "/minio/health/ready"

    def __init__(self, state_dir, host: str = "127.0.0.1", port: int = 9000, *,
                 access_key: str = MINIO_ROOT_USER, secret_key: str = MINIO_ROOT_PASSWORD,
                 bin_dir=None, log_path=None):
        super().__init__(state_dir, host, port, bin_dir, log_path)
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = self.state_dir / "minio-data"
        self.env.update(MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key,
                        MINIO_BROWSER="off", MINIO_UPDATE="off")

    @property
    def endpoint_url(self) -> str:
        return self.url

    def command(self) -> list[str]:
        # The console is switched off, but MinIO still binds its address: give it a free port
        # so two instances never collide on the default 9001.
        return [str(self.binary), "server", str(self.data_dir), "--quiet",
                "--address", f"{self.host}:{self.port}",
                "--console-address", f"{self.host}:{free_port(self.host)}"]

    def client_env(self) -> dict[str, str]:
        """Environment for an S3 client of this server (the AWS credential chain)."""
        return {"S3_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def client(self):
        """A boto3 S3 client with this server's credentials."""
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)


class FerretDBServer(_Service):
    """FerretDB v1 with the SQLite handler; MongoDB wire protocol at :attr:`uri`."""

    name = "ferretdb"
    ready_path = None  # not HTTP: :meth:`is_ready` pings it

    def __init__(self, state_dir, host: str = "127.0.0.1", port: int = 27017, *, bin_dir=None,
                 log_path=None):
        super().__init__(state_dir, host, port, bin_dir, log_path)
        self.data_dir = self.state_dir / "ferretdb-data"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # --debug-addr=- turns off the metrics/pprof listener (default 127.0.0.1:8088), so two
        # instances never collide on it.
        return [str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
                f"--state-dir={self.state_dir}", f"--listen-addr={self.host}:{self.port}",
                "--debug-addr=-", "--telemetry=disable", "--log-level=WARN"]

    def is_ready(self) -> bool:
        import pymongo
        import pymongo.errors
        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500,
                                     connectTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()
