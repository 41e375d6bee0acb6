"""Start a function the two ways users run it (gunicorn, func-python) and wait on readiness."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def gunicorn_cmd(function: str, port: int) -> list[str]:
    """The command `make run` uses for a function."""
    return [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "llmfn/src/llmfn/gunicorn_conf.py"),
            "--chdir", str(ROOT / "functions" / function), "function.wsgi:app",
            "--bind", f"127.0.0.1:{port}"]


def func_python_cmd(python: str | None = None, module: str = "http") -> list[str]:
    """What func's Python scaffolding runs: ``func_python.<module>.serve(new)``."""
    code = f"from function import new; from func_python.{module} import serve; serve(new)"
    return [python or sys.executable, "-c", code]


class ServerProcess:
    """A server subprocess on 127.0.0.1:port with its log in a file."""

    def __init__(self, cmd: list[str], *, port: int, env: dict[str, str], cwd: Path,
                 log_path: Path):
        self.cmd, self.port, self.cwd, self.log_path = cmd, port, cwd, log_path
        self.env = {**os.environ, "LISTEN_ADDRESS": f"127.0.0.1:{port}", **env}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def readiness(self) -> tuple[int | None, str]:
        """(status, text) of /health/readiness, or (None, error) when not listening yet."""
        try:
            r = requests.get(f"{self.url}/health/readiness", timeout=2)
            return r.status_code, r.text
        except requests.RequestException as err:
            return None, type(err).__name__

    def wait_listening(self, deadline_s: float = 60) -> None:
        self._wait(lambda s: s is not None, deadline_s, "listening")

    def wait_ready(self, deadline_s: float = 180) -> None:
        self._wait(lambda s: s == 200, deadline_s, "ready")

    def _wait(self, ok, deadline_s: float, what: str) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            status, _ = self.readiness()
            if ok(status):
                return
            time.sleep(0.1)
        raise TimeoutError(f"not {what} after {deadline_s}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 30) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
