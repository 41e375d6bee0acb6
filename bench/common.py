"""Shared helpers of the benchmarks: model file, ports, servers under test, memory, statistics.

Stdlib only, so the in-process worker of bench_portable.py can import it from another venv.
Every wait has a deadline; every server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scripts import procs  # the server processes (stdlib only, like this module)
from scripts.doc_sections import update_doc_section  # noqa: F401  (each bench's own section)
from scripts.model_files import smollm2_path  # noqa: F401  (stdlib only)
from scripts.procs import HOST, free_port  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE = REPO_ROOT / ".state"
LOG_DIR = STATE / "logs" / "bench"
VENV_PY = REPO_ROOT / ".venv" / "bin" / "python"
Server = procs.ServerProcess  # every server under test; ready in ``srv.start().wait_ready()`` s
POLL_S = 0.02  # readiness poll of the servers under test: the resolution of "ready in" times


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


def _log_path(name: str, port: int) -> Path:
    return LOG_DIR / f"{name}-{port}.log"


def gunicorn_server(port: int, env: dict, function: str = "generate",
                    extra: tuple[str, ...] = ()) -> Server:
    """Our function under gunicorn, started exactly like scripts/run.py does."""
    return procs.gunicorn_server(function, port, env=env, extra=extra, poll_s=POLL_S,
                                 log_path=_log_path(f"gunicorn-{function}", port))


def func_python_server(port: int, env: dict) -> Server:
    """Our generate function under func-python's ASGI server (``func_python.http.serve``)."""
    return procs.func_python_server("generate", port, env=env, python=VENV_PY, poll_s=POLL_S,
                                    log_path=_log_path("func-python-generate", port))


def llama_server(port: int, model: Path, *, n_ctx: int, threads: int, parallel: int = 1,
                 flash_attn: str = "off", extra: list[str] | None = None,
                 env: dict | None = None) -> Server:
    """llama.cpp's llama-server with the same context, threads, batch and attention as ours
    (``parallel`` slots sharing ``n_ctx``; ``flash_attn`` on|off|auto; ``env`` added to its
    environment, e.g. an OpenMP wait policy)."""
    return procs.llama_server(model, port, n_ctx=n_ctx, threads=threads, parallel=parallel,
                              flash_attn=flash_attn, extra=extra or (), poll_s=POLL_S,
                              log_path=_log_path("llama-server", port), env=env)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- plots ----------------------------------------------------------------------------------------
def figure_footer(d: dict, command: str) -> str:
    """The line under every plot: when, where and how it was measured (the docs quote plots
    from several days and machines, so the picture itself says which)."""
    date = d.get("date", "date not recorded")
    return f"{date} UTC · {d.get('machine', 'machine not recorded')} · {command}"


def save_figure(fig, out: Path, dpi: int = 100, footer: str | None = None) -> None:
    """Lay out ``fig`` (with ``footer`` in small print along its bottom), write it to ``out``
    (its folder made) and free it."""
    import matplotlib.pyplot as plt

    if footer:
        fig.text(0.005, 0.005, footer, fontsize=7, color="0.35", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
    else:
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    log(f"wrote {out}")


def machine_line() -> str:
    """CPU model, its widest SIMD (two "AMD EPYC" VMs differed in AVX-512) and core count."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({simd}), {os.cpu_count()} cores"


def run_stamp() -> dict:
    """Date (UTC) and machine of a run, stored in its JSON for the tables and the plots."""
    return {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine_line()}


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
