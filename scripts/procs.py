"""Server subprocesses: the one home of starting, waiting on and stopping them.

A :class:`ServerProcess` is a child process on ``host:port`` with its output in a log file, a
readiness wait with a deadline, and a clean stop (SIGTERM to its process group, SIGKILL after
a grace). ``make run`` (scripts/run.py), the local stack (scripts/services.py), the tests and
the benchmarks all start their servers with it, and the functions with the commands below:

- :func:`gunicorn_server`: a function under gunicorn with llmfn's config, as ``make run`` and
  the container run it;
- :func:`func_python_server`: what func's Python scaffolding runs,
  ``from function import new; from func_python.http import serve; serve(new)``;
- :func:`llama_server`: llama.cpp's ``llama-server`` (scripts/build_llama_server.sh).

Stdlib only: the benchmarks (also from the portable-build venv) and scripts import it.
Everything listens on 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY_PATH = "/health/readiness"  # every function's readiness probe (200 = ready)
GUNICORN_CONF = REPO_ROOT / "llmfn" / "src" / "llmfn" / "gunicorn_conf.py"
FUNCTIONS_DIR = REPO_ROOT / "functions"
LLAMA_SERVER = REPO_ROOT / ".state" / "llama.cpp" / "build" / "bin" / "llama-server"


class ServerError(RuntimeError):
    """A server could not start, exited, or was not ready within its deadline."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_status(host: str, port: int, path: str, timeout_s: float = 2.0,
                headers: dict[str, str] | None = None) -> tuple[int | None, str]:
    """GET ``path``: (status, body text), or (None, error name) when nothing answers.
    Straight to the socket, so no proxy setting of the environment gets in the way."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as err:
        return None, type(err).__name__
    finally:
        conn.close()


def die_with_parent() -> None:
    """Child pre-exec hook: get SIGTERM when the parent dies (Linux), so no server outlives a
    killed runner. The signal comes when the *thread* that started the child ends: start such
    servers from the main thread."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS = resident now, VmHWM = peak resident)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class ServerProcess:
    """A server subprocess on ``host:port`` with its output appended to ``log_path``.

    ``env`` is added to this process's environment; the child gets its own session (process
    group, and a Ctrl-C in the terminal reaches only the runner, which stops it in order).
    Ready when GET ``ready_path`` (default ``/health/readiness``) answers 200. Subclasses may
    override :meth:`command` (instead of passing ``cmd``), :meth:`environ` and :meth:`is_ready`;
    ``name``, ``ready_deadline_s``, ``stop_grace_s`` and ``poll_s`` are their defaults.
    """

    name = "server"
    ready_path: str | None = READY_PATH
    ready_deadline_s = 180.0  # model download and load included
    stop_grace_s = 30.0
    poll_s = 0.1

    def __init__(self, cmd: list[str] | None = None, *, port: int, log_path: str | os.PathLike,
                 env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 host: str = HOST, name: str | None = None, ready_path: str | None = None,
                 poll_s: float | None = None, die_with_parent: bool = False):
        self.cmd = list(cmd) if cmd is not None else None
        self.port, self.host, self.cwd = port, host, cwd
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        if name is not None:
            self.name = name
        if ready_path is not None:
            self.ready_path = ready_path
        if poll_s is not None:
            self.poll_s = poll_s
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self.t_start = 0.0  # time.perf_counter() at start

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return list(self.cmd)

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self) -> ServerProcess:
        """Start the process (returns at once; then :meth:`wait_ready`). No-op while running."""
        if self.running:
            return self
        cmd = self.command()
        if os.path.isabs(cmd[0]) and not os.path.exists(cmd[0]):
            raise ServerError(f"{self.name}: {cmd[0]} not found")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.t_start = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd, env=self.environ(), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent if self.die_with_parent else None)
        return self

    def readiness(self) -> tuple[int | None, str]:
        """(status, text) of GET ``ready_path``, or (None, error) when not listening yet."""
        return http_status(self.host, self.port, self.ready_path)

    def is_ready(self) -> bool:
        return self.readiness()[0] == 200

    def wait_ready(self, deadline_s: float | None = None, poll_s: float | None = None) -> float:
        """Poll :meth:`is_ready` until it passes; seconds from process start to ready.
        Raises :class:`ServerError` when the process exits or after ``deadline_s``."""
        return self._wait(self.is_ready, "ready", deadline_s, poll_s)

    def wait_listening(self, deadline_s: float = 60.0) -> float:
        """Wait until ``ready_path`` answers at all (any status): listening, maybe not ready."""
        return self._wait(lambda: self.readiness()[0] is not None, "listening", deadline_s, None)

    def _wait(self, ok, what: str, deadline_s: float | None, poll_s: float | None) -> float:
        deadline_s = self.ready_deadline_s if deadline_s is None else deadline_s
        end = time.monotonic() + deadline_s
        while True:
            if self.proc is None:
                raise ServerError(f"{self.name} was not started")
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if ok():
                return time.perf_counter() - self.t_start
            if time.monotonic() >= end:
                raise ServerError(f"{self.name} not {what} after {deadline_s}s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(self.poll_s if poll_s is None else poll_s)

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; the exit code (None when
        never started). Safe to call again."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            grace_s = self.stop_grace_s if grace_s is None else grace_s
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The last ``n_bytes`` of the log file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The process and its direct children (gunicorn: the master and its worker)."""
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def memory_kb(self) -> dict:
        """VmRSS / VmHWM of the process holding the model (its one child when it has one:
        gunicorn's worker; else the process itself) and the RSS of the whole tree."""
        kids = children(self.proc.pid)
        pid = kids[0] if len(kids) == 1 else self.proc.pid
        return {"rss_kb": proc_status_kb(pid, "VmRSS"), "hwm_kb": proc_status_kb(pid, "VmHWM"),
                "tree_rss_kb": sum(proc_status_kb(p, "VmRSS") or 0 for p in self.pids())}

    def __enter__(self):
        self.start().wait_ready()
        return self

    def __exit__(self, *exc):
        self.stop()


# -- the ways a function (and its baseline) is run -------------------------------------------------
def gunicorn_cmd(function: str, port: int, *, host: str = HOST,
                 conf: str | os.PathLike | None = None, extra: Iterable[str] = ()) -> list[str]:
    """The command ``make run`` (scripts/run.py) runs a function with: the venv's gunicorn
    with llmfn's config (``conf`` overrides it) from ``functions/<function>``."""
    gunicorn = Path(os.path.abspath(sys.executable)).parent / "gunicorn"
    return [str(gunicorn), "-c", str(conf or GUNICORN_CONF), "--chdir",
            str(FUNCTIONS_DIR / function), "function.wsgi:app", "--bind", f"{host}:{port}",
            *extra]


def gunicorn_server(function: str, port: int, *, log_path, env: dict[str, str] | None = None,
                    conf=None, extra: Iterable[str] = (), host: str = HOST,
                    **kw) -> ServerProcess:
    """``functions/<function>`` under gunicorn (:func:`gunicorn_cmd`), started from the repo
    root. ``kw``: more :class:`ServerProcess` arguments (``name``, ``poll_s``, ...)."""
    kw.setdefault("name", f"gunicorn-{function}")
    return ServerProcess(gunicorn_cmd(function, port, host=host, conf=conf, extra=extra),
                         port=port, host=host, log_path=log_path, env=env, cwd=REPO_ROOT, **kw)


def func_python_cmd(python: str | os.PathLike | None = None, module: str = "http") -> list[str]:
    """What func's Python scaffolding runs: ``func_python.<module>.serve(new)`` (``module``:
    "http" or "cloudevent", the ``invoke`` of func.yaml), with ``python`` (default: this one)."""
    code = f"from function import new; from func_python.{module} import serve; serve(new)"
    return [str(python or sys.executable), "-c", code]


def func_python_server(function_dir: str | os.PathLike, port: int, *, log_path,
                       env: dict[str, str] | None = None, python=None, module: str = "http",
                       host: str = HOST, **kw) -> ServerProcess:
    """:func:`func_python_cmd` run in ``function_dir`` (the folder holding ``function/``; a bare
    name means ``functions/<name>``), listening where ``LISTEN_ADDRESS`` says."""
    function_dir = Path(function_dir)
    if not function_dir.is_absolute():
        function_dir = FUNCTIONS_DIR / function_dir
    kw.setdefault("name", f"func-python-{function_dir.name}")
    return ServerProcess(func_python_cmd(python, module), port=port, host=host,
                         log_path=log_path, cwd=function_dir,
                         env={**(env or {}), "LISTEN_ADDRESS": f"{host}:{port}"}, **kw)


def llama_server(model: str | os.PathLike, port: int, *, log_path, n_ctx: int, threads: int,
                 parallel: int = 1, flash_attn: str = "off", batch: int = 512, ubatch: int = 512,
                 extra: Iterable[str] = (), host: str = HOST, **kw) -> ServerProcess:
    """llama.cpp's llama-server on ``model``: ``parallel`` slots sharing ``n_ctx``, ``threads``
    for prompt and generation, ``flash_attn`` on|off|auto; ready when GET /health is 200."""
    if not LLAMA_SERVER.exists():
        raise ServerError(f"{LLAMA_SERVER} missing: run scripts/build_llama_server.sh")
    cmd = [str(LLAMA_SERVER), "-m", str(model), "--host", host, "--port", str(port),
           "-c", str(n_ctx), "-t", str(threads), "-tb", str(threads), "-b", str(batch),
           "-ub", str(ubatch), "-np", str(parallel), "-fa", flash_attn, "--no-webui", *extra]
    kw.setdefault("name", "llama-server")
    return ServerProcess(cmd, port=port, host=host, log_path=log_path, ready_path="/health",
                         **kw)
