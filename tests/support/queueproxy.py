"""Our functions behind Knative's real queue-proxy (scripts/knative_pod.py) for the tests of
tests/test_knative_queue_proxy*.py: the revision settings as ``kustomize build deploy`` renders
them, the functions' local environment, and SSE reading with arrival times.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts import knative_pod
from scripts.model_files import smollm2_path
from tests.support import kustomize
from tests.support.models import model_file

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".state" / "knative" / "queue-proxy.json"  # what the tests saw, for the docs


def record(key: str, value) -> None:
    """Add ``key`` to the report of what the queue-proxy answered (and print it)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=2))
    print(key, json.dumps(value, indent=2))


def revision_spec(service: str) -> knative_pod.RevisionSpec:
    """The revision template of ``service`` as `kustomize build deploy` renders it."""
    kustomize.binary()  # a missing kustomize fails the test saying how to install it
    return knative_pod.revision_specs()[service]


def function_env(function: str, tmp: Path, *, model: str = "tiny", **extra) -> dict[str, str]:
    """The local part of a function's environment (the manifest's literal values come with the
    pod): a local model file (``tiny``: the synthetic LLaMA, ``smollm2``: SmolLM2-135M), the
    cache under ``tmp``, one thread, no event sink. ``extra`` adds or overrides."""
    if function == "embed":
        uri = f"file://{model_file('all-minilm-l6-v2-f16.gguf', 'convert_minilm.py')}"
    elif model == "smollm2":
        uri = f"file://{smollm2_path()}"
    else:
        uri = f"file://{model_file('tiny-llama.gguf', 'make_tiny_model.py')}"
    env = {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(tmp / "cache"), "N_THREADS": "1",
           "OMP_WAIT_POLICY": "passive", "K_SINK": "", "MODEL_SHA256": ""}
    if model == "tiny" and function == "generate":
        env["MODEL_NAME"] = "tiny-llama"
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Stream:
    """One SSE response as the client saw it: status, each ``data:`` line with its arrival
    time (s after the request was sent), the comment lines (heartbeats) and the times."""
    status: int
    t_first_byte: float | None = None
    data: list[tuple[float, bytes]] = field(default_factory=list)
    comments: list[tuple[float, bytes]] = field(default_factory=list)
    body: str = ""
    t_end: float = 0.0

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1][1] == b"data: [DONE]"

    def token_times(self) -> list[float]:
        """Arrival times of the chunks that carry text."""
        return [t for t, line in self.data if line.startswith(b"data: {")
                and _text(line)]

    def gaps(self) -> list[float]:
        times = self.token_times()
        return [b - a for a, b in zip(times, times[1:])]


def _text(line: bytes) -> str:
    try:
        choice = json.loads(line[6:])["choices"][0]
    except (ValueError, KeyError, IndexError):
        return ""
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def stream(url: str, body: dict, *, path: str = "/v1/completions", timeout_s: float = 120,
           session: requests.Session | None = None, on_first=None) -> Stream:
    """POST a streamed request and read it to the end, timing every line on arrival.
    ``on_first`` is called once the first ``data:`` line arrived."""
    http = session or requests
    t0 = time.perf_counter()
    resp = http.post(f"{url}{path}", json={**body, "stream": True}, stream=True,
                     timeout=(5, timeout_s))
    out = Stream(resp.status_code)
    if resp.status_code != 200:
        out.body = resp.text
        out.t_end = time.perf_counter() - t0
        return out
    for line in resp.iter_lines(chunk_size=None):
        t = time.perf_counter() - t0
        if out.t_first_byte is None:
            out.t_first_byte = t
        if line.startswith(b"data: "):
            if not out.data and on_first is not None:
                on_first()
            out.data.append((t, line))
        elif line.startswith(b":"):
            out.comments.append((t, line))
    out.t_end = time.perf_counter() - t0
    resp.close()
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank ``p`` quantile (0 < p <= 1)."""
    vals = sorted(values)
    return vals[max(0, math.ceil(p * len(vals)) - 1)]


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else \
        rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
    found = re.findall(pattern, text, re.M)
    return sum(float(v) for v in found) if found else 0.0
