"""Shared helpers of the benchmarks: model file, ports, servers under test, memory, statistics.

Stdlib only, so the in-process worker of bench_portable.py can import it from another venv.
Every wait has a deadline; every server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from model_files import smollm2_path  # noqa: E402,F401  (scripts/model_files.py, stdlib only)
STATE = REPO_ROOT / ".state"
LOG_DIR = STATE / "logs" / "bench"
VENV_PY = REPO_ROOT / ".venv" / "bin" / "python"
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
GUNICORN_CONF = REPO_ROOT / "llmfn" / "src" / "llmfn" / "gunicorn_conf.py"
GENERATE_DIR = REPO_ROOT / "functions" / "generate"
LLAMA_SERVER = STATE / "llama.cpp" / "build" / "bin" / "llama-server"
HOST = "127.0.0.1"
READY_DEADLINE_S = 180.0  # process start to ready, model load included


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- statistics -----------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    """Median, min, max and count of ``values`` (empty -> all None)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank ``p`` quantile (0 < p <= 1) of ``values``; None when empty."""
    vals = sorted(v for v in values if v is not None)
    return vals[max(0, math.ceil(p * len(vals)) - 1)] if vals else None


def fmt(s: dict, unit: str = "", digits: int = 3) -> str:
    """``median (min-max)`` of a :func:`summary`."""
    if s["median"] is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}-{f.format(s['max'])})"


def ratio(a: dict, b: dict) -> float | None:
    """Ratio of two medians (a / b)."""
    if a["median"] is None or not b["median"]:
        return None
    return a["median"] / b["median"]


# -- memory ---------------------------------------------------------------------------------------
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


# -- HTTP -----------------------------------------------------------------------------------------
def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Timing:
    """One request as the client saw it."""
    ttft_s: float | None = None  # request sent -> first chunk with text (streaming only)
    total_s: float = 0.0  # request sent -> last byte
    last_token_s: float | None = None  # request sent -> last chunk with text (streaming only)
    completion_tokens: int = 0  # from the server's usage field
    prompt_tokens: int = 0
    text: str = ""
    chunks: int = 0
    chunk_s: list[float] = field(default_factory=list)  # request sent -> each chunk with text

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first per second between first and last text chunk (streaming)."""
        if self.ttft_s is None or self.last_token_s is None or self.completion_tokens < 2:
            return None
        span = self.last_token_s - self.ttft_s
        return (self.completion_tokens - 1) / span if span > 0 else None


def post_completion(port: int, body: dict, *, timeout_s: float = 300.0) -> Timing:
    """POST /v1/completions (JSON or SSE) and time it; tokens come from ``usage``."""
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    t = Timing()
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=payload,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
        if not body.get("stream"):
            data = json.loads(resp.read())
            t.total_s = time.perf_counter() - t0
            t.text = data["choices"][0]["text"]
            t.completion_tokens = data["usage"]["completion_tokens"]
            t.prompt_tokens = data["usage"]["prompt_tokens"]
            return t
        parts = []
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            now = time.perf_counter() - t0
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    t.chunks += 1
                    t.chunk_s.append(now)
                    parts.append(choice["text"])
                    if t.ttft_s is None:
                        t.ttft_s = now
                    t.last_token_s = now
            if event.get("usage"):
                t.completion_tokens = event["usage"]["completion_tokens"]
                t.prompt_tokens = event["usage"]["prompt_tokens"]
        t.total_s = time.perf_counter() - t0
        t.text = "".join(parts)
        return t
    finally:
        conn.close()


# -- servers under test ---------------------------------------------------------------------------
@dataclass
class Server:
    """A server process with a readiness URL, started at ``t_start`` (perf_counter)."""
    name: str
    cmd: list[str]
    port: int
    ready_path: str
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    proc: subprocess.Popen | None = None
    t_start: float = 0.0
    log_path: Path | None = None

    def start(self) -> "Server":
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}-{self.port}.log"
        log = open(self.log_path, "wb")
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, cwd=self.cwd,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return self

    def wait_ready(self, deadline_s: float = 120.0, poll_s: float = 0.02) -> float:
        """Poll the readiness URL until 200; seconds from process start. Raises on deadline."""
        url = f"http://{HOST}:{self.port}{self.ready_path}"
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            status, _ = http_get(url, timeout_s=1.0)
            if status == 200:
                return time.perf_counter() - self.t_start
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready after {deadline_s}s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def start_ready(self, deadline_s: float = READY_DEADLINE_S, poll_s: float = 0.02) -> float:
        """:meth:`start`, then :meth:`wait_ready`: seconds from process start to ready."""
        return self.start().wait_ready(deadline_s, poll_s)

    def model_pid(self) -> int:
        """The process holding the model: gunicorn's worker, else the process itself."""
        kids = children(self.proc.pid)
        return kids[0] if kids and self.name.startswith("gunicorn") else self.proc.pid

    def memory_kb(self) -> dict:
        """VmRSS / VmHWM of the model process, and RSS of the whole tree (master + worker)."""
        pid = self.model_pid()
        tree = [self.proc.pid] + children(self.proc.pid)
        return {"rss_kb": proc_status_kb(pid, "VmRSS"), "hwm_kb": proc_status_kb(pid, "VmHWM"),
                "tree_rss_kb": sum(proc_status_kb(p, "VmRSS") or 0 for p in tree)}

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace_s)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


STORY_PROMPT = ("Once upon a time, in a small village at the edge of a great forest, there lived "
                "an old clockmaker who")


def completion_body(i: int, *, stream: bool, max_tokens: int) -> dict:
    """A greedy /v1/completions body whose prompt starts with ``i + 1``, so that requests with
    different ``i`` share no cached prompt prefix."""
    b = {"prompt": f"{i + 1}. {STORY_PROMPT}", "max_tokens": max_tokens, "temperature": 0,
         "seed": 42, "stream": stream}
    if stream:
        b["stream_options"] = {"include_usage": True}
    return b


def file_model_env(model: Path) -> dict:
    """MODEL_URI / MODEL_CACHE_DIR of our function for a local GGUF file."""
    return {"MODEL_URI": f"file://{model}", "MODEL_CACHE_DIR": str(STATE / "bench" / "cache")}


def generate_env(model_env: dict, *, n_ctx: int, threads: int) -> dict:
    """Environment of our generate function for a benchmark (no events, no auth; flash
    attention off, as :func:`llama_server` defaults to)."""
    return {"N_CTX": str(n_ctx), "N_THREADS": str(threads), "N_BATCH": "512",
            "N_UBATCH": "512", "K_SINK": "", "API_KEYS": "", "LOG_LEVEL": "warning",
            "FUNCTION_NAME": "generate", "FLASH_ATTN": "off", **model_env}


def deployed_env(manifest: Path = REPO_ROOT / "deploy" / "generate.yaml") -> dict[str, str]:
    """The plain ``- name: K`` / ``value: V`` env entries of a manifest (secrets skipped), read
    as text so that no YAML library is needed: what the deployment gives the function."""
    env: dict[str, str] = {}
    name = None
    for line in manifest.read_text().splitlines():
        s = line.strip()
        if s.startswith("- name:"):
            name = s.split(":", 1)[1].strip().strip('"')
        elif name and s.startswith("value:"):
            env[name] = s.split(":", 1)[1].strip().strip('"')
            name = None
    return env


def gunicorn_server(port: int, env: dict) -> Server:
    """Our generate function under gunicorn, started exactly like scripts/run.py does."""
    cmd = [str(GUNICORN), "-c", str(GUNICORN_CONF), "--chdir", str(GENERATE_DIR),
           "function.wsgi:app", "--bind", f"{HOST}:{port}"]
    return Server("gunicorn-generate", cmd, port, "/health/readiness", env=env,
                  cwd=str(REPO_ROOT))


def func_python_server(port: int, env: dict) -> Server:
    """Our generate function under func-python's ASGI server (``func_python.http.serve``)."""
    code = ("import sys; sys.path.insert(0, %r); from func_python.http import serve; "
            "from function import new; serve(new)" % str(GENERATE_DIR))
    return Server("func-python-generate", [str(VENV_PY), "-c", code], port,
                  "/health/readiness", env={**env, "LISTEN_ADDRESS": f"{HOST}:{port}"},
                  cwd=str(GENERATE_DIR))


def llama_server(port: int, model: Path, *, n_ctx: int, threads: int, parallel: int = 1,
                 flash_attn: str = "off", extra: list[str] | None = None) -> Server:
    """llama.cpp's llama-server with the same context, threads, batch and attention as ours
    (``parallel`` slots sharing ``n_ctx``; ``flash_attn`` on|off|auto)."""
    if not LLAMA_SERVER.exists():
        raise SystemExit(f"{LLAMA_SERVER} missing: run scripts/build_llama_server.sh")
    cmd = [str(LLAMA_SERVER), "-m", str(model), "--host", HOST, "--port", str(port),
           "-c", str(n_ctx), "-t", str(threads), "-tb", str(threads), "-b", "512",
           "-ub", "512", "-np", str(parallel), "-fa", flash_attn, "--no-webui", *(extra or [])]
    return Server("llama-server", cmd, port, "/health")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- docs/benchmarks.md ---------------------------------------------------------------------------
DOC = REPO_ROOT / "docs" / "benchmarks.md"


def update_doc_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- bench:NAME:begin -->`` and ``...:end -->`` in ``doc``
    (appended when missing), so each benchmark rewrites only its own section."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def machine_line() -> str:
    """CPU model and core count of this machine, for the tables."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def write_json(name: str, data: dict) -> Path:
    """Raw results under .state/bench/NAME.json."""
    out = STATE / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    return out


def publish(name: str, data: dict, render: Callable[[dict], str], *, no_doc: bool) -> None:
    """A benchmark's results: raw JSON to .state/bench/NAME.json (NAME-scratch.json with
    ``no_doc``), ``render(data)`` to stdout and, unless ``no_doc``, into the NAME section of
    docs/benchmarks.md."""
    log(f"wrote {write_json(name + ('-scratch' if no_doc else ''), data)}")
    md = render(data)
    print(md)
    if not no_doc:
        update_doc_section(name, md)
