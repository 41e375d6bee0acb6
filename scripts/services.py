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

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = REPO_ROOT / ".state" / "bin"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_services.sh"

MINIO_ROOT_USER = "llmfn-local"
MINIO_ROOT_PASSWORD = "llmfn-local-secret"

_POLL_S = 0.1
_STOP_GRACE_S = 10.0


def _die_with_parent() -> None:
    """Child pre-exec hook: get SIGTERM when the parent dies (Linux), so no server outlives
    a killed test run or runner."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServiceError(RuntimeError):
    """A local service could not be installed, started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


class _Server:
    """A child process with a log file, a readiness check and a clean stop."""

    name = "server"

    def __init__(self, state_dir: str | os.PathLike, host: str, port: int,
                 bin_dir: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None):
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.bin_dir = Path(bin_dir) if bin_dir else BIN_DIR
        self.log_path = Path(log_path) if log_path else self.state_dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _check_ready(self) -> bool:
        raise NotImplementedError

    @property
    def binary(self) -> Path:
        return self.bin_dir / self.name

    def start(self) -> "_Server":
        """Start the process (returns at once; call :meth:`wait_ready`)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not self.binary.exists():
            raise ServiceError(f"{self.binary} not found: run scripts/install_services.sh")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # Own session: a Ctrl-C in the terminal reaches the runner, which stops us in order.
        self.proc = subprocess.Popen(self._command(), env=self._env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, deadline_s: float = 30.0) -> "_Server":
        """Poll the readiness check until it passes; raise after ``deadline_s`` seconds."""
        end = time.monotonic() + deadline_s
        while True:
            if self.proc is None:
                raise ServiceError(f"{self.name} was not started")
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if self._check_ready():
                return self
            if time.monotonic() >= end:
                raise ServiceError(f"{self.name} not ready after {deadline_s}s; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM, wait up to ``grace_s`` seconds, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The last ``n_bytes`` of the log file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start().wait_ready()

    def __exit__(self, *exc):
        self.stop()


class MinioServer(_Server):
    """MinIO single-drive server; S3 API at :attr:`endpoint_url`."""

    name = "minio"

    def __init__(self, state_dir, host: str = "127.0.0.1", port: int = 9000, *,
                 access_key: str = MINIO_ROOT_USER, secret_key: str = MINIO_ROOT_PASSWORD,
                 bin_dir=None, log_path=None):
        super().__init__(state_dir, host, port, bin_dir, log_path)
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = self.state_dir / "minio-data"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        # The console is switched off, but MinIO still binds its address: give it a free port
        # so two instances never collide on the default 9001.
        return [str(self.binary), "server", str(self.data_dir), "--quiet",
                "--address", f"{self.host}:{self.port}",
                "--console-address", f"{self.host}:{free_port(self.host)}"]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update(MINIO_ROOT_USER=self.access_key, MINIO_ROOT_PASSWORD=self.secret_key,
                   MINIO_BROWSER="off", MINIO_UPDATE="off")
        return env

    def _check_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/minio/health/ready",
                                        timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

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


class FerretDBServer(_Server):
    """FerretDB v1 with the SQLite handler; MongoDB wire protocol at :attr:`uri`."""

    name = "ferretdb"

    def __init__(self, state_dir, host: str = "127.0.0.1", port: int = 27017, *, bin_dir=None,
                 log_path=None):
        super().__init__(state_dir, host, port, bin_dir, log_path)
        self.data_dir = self.state_dir / "ferretdb-data"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # --debug-addr=- turns off the metrics/pprof listener (default 127.0.0.1:8088), so two
        # instances never collide on it.
        return [str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
                f"--state-dir={self.state_dir}", f"--listen-addr={self.host}:{self.port}",
                "--debug-addr=-", "--telemetry=disable", "--log-level=WARN"]

    def _check_ready(self) -> bool:
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
