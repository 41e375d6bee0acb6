"""The audit function in tests: its package, inference events as producers send them, its DB.

Every function folder has a top-level package named ``function`` (func requires it), so the
root test tree imports audit's under the unique name ``audit_function``; audit's own tests
(functions/audit/tests, a pytest process of their own) use the same loader.
"""
from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from pathlib import Path

import pymongo
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from llmfn.events import INFERENCE_COMPLETED
from scripts.packages import load_package

ROOT = Path(__file__).resolve().parents[2]
AUDIT_DIR = ROOT / "functions" / "audit"
SUBMODULES = ("settings", "service", "api", "func", "ingest", "kpis", "rollup", "store",
              "commit", "compaction")


def load_audit():
    """audit's ``function`` package as ``audit_function``, with its submodules imported."""
    pkg = AUDIT_DIR / "function"
    return load_package("audit", tuple(sub for sub in SUBMODULES
                                       if (pkg / f"{sub}.py").exists()))


def finish_reason(i: int) -> str | None:
    """The i-th event's `finish_reason`: null for embed, `error` for a 500, every 7th
    `tool_calls`, every 5th `length`, else `stop`."""
    if i % 3 == 0:
        return None
    if i % 10 == 0:
        return "error"
    return "tool_calls" if i % 7 == 0 else "length" if i % 5 == 0 else "stop"


def output_format(i: int) -> str | None:
    """The i-th event's `output_format`: `tool_call` with tool calls, some `json_schema` and
    `json_object` generations, else `text`; ``None``: absent, as from an older producer."""
    if i % 4 == 3:
        return None
    if finish_reason(i) == "tool_calls":
        return "tool_call"
    if i % 3:
        return {1: "json_schema", 2: "json_object"}.get(i % 8, "text")
    return "text"


def inference_data(i: int, now: dt.datetime, **kw) -> dict:
    """The data of the i-th inference event of a varied stream (functions, models, errors,
    finish reasons, output formats)."""
    d = {"request_id": f"r{i}", "function": "generate" if i % 3 else "embed",
         "model": "tiny" if i % 2 else "mini", "model_sha256": "ab" * 32, "service": "svc",
         "revision": "svc-00001", "endpoint": "/v1/chat/completions",
         "status": 500 if i % 10 == 0 else 200, "error_code": None, "prompt_tokens": 10 + i,
         "completion_tokens": i, "input_count": 1, "ttft_s": 0.01 * i, "duration_s": 0.1 * i,
         "tokens_per_s": 5.0, "finish_reason": finish_reason(i), "cold_start": i % 7 == 0,
         "stream": False, "time": (now - dt.timedelta(seconds=i)).isoformat()}
    if output_format(i) is not None:
        d["output_format"] = output_format(i)
    d.update(kw)
    return d


def make_event(i: int, now: dt.datetime, *, source: str = "/llmfn/generate", **kw) -> CloudEvent:
    """The i-th inference event, id ``ev-<i>``."""
    return CloudEvent({"type": INFERENCE_COMPLETED, "source": source, "id": f"ev-{i}",
                       "subject": "tiny", "datacontenttype": "application/json"},
                      inference_data(i, now, **kw))


def encode(event: CloudEvent, mode: str) -> tuple[dict, bytes]:
    """(headers, body) of ``event`` in ``binary`` or ``structured`` mode (SDK bindings)."""
    msg = to_structured_event(event) if mode == "structured" else to_binary_event(event)
    return dict(msg.headers), msg.body


def deliveries(n: int, now: dt.datetime, seed: int = 7) -> list[tuple[int, dict, bytes]]:
    """Every event twice (once binary, once structured), shuffled: at-least-once, reordered."""
    out = []
    for i in range(1, n + 1):
        ev = make_event(i, now)
        out += [(i, *encode(ev, "binary")), (i, *encode(ev, "structured"))]
    random.Random(seed).shuffle(out)
    return out


def unique_db() -> str:
    """A database name no other test uses."""
    return f"audit_{uuid.uuid4().hex[:12]}"


def audit_env(uri: str, db: str, **kw: str) -> dict[str, str]:
    """The environment of an audit process on database ``db``."""
    env = dict(os.environ)
    env.update(MONGODB_URI=uri, MONGODB_DATABASE=db, MONGODB_TIMEOUT_MS="1000", **kw)
    return env


def count(uri: str, db: str, collection: str = "inference_events") -> int:
    """Documents in ``db.collection``."""
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        return client[db][collection].count_documents({})


READY_DEADLINE_S = 60.0


def start_gunicorn(tmp_path: Path, env: dict):
    """audit under gunicorn, as `make run` and the Containerfile run it; ready."""
    from scripts.procs import free_port, gunicorn_server
    proc = gunicorn_server("audit", free_port(), log_path=tmp_path / "gunicorn.log",
                           env={**env, "GUNICORN_THREADS": "8"})
    proc.start().wait_ready(READY_DEADLINE_S)
    return proc


def start_func_python(tmp_path: Path, env: dict):
    """audit as `func deploy` serves it (`invoke: http`: func_python.http); ready."""
    from scripts.procs import free_port, func_python_server
    proc = func_python_server("audit", free_port(), log_path=tmp_path / "func.log", env=env)
    proc.start().wait_ready(READY_DEADLINE_S)
    return proc
