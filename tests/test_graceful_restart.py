"""Graceful restarts measured the way Knative's HA tests measure them (docs/load.md).

Knative's HA tests (test/ha in knative/serving) keep a prober sending requests while a
component is killed and a new one takes over, then require that no probe failed. Here the
component is a function process, once under gunicorn (the Containerfile, `make run`) and once
under func-python (what `func deploy` runs): an old generate and embed take probes, a new pair
starts on other ports and gets ready, then the old pair gets SIGTERM while the probes go on.

On one machine nothing routes for us, so the probe client is its own router, as the kubelet
and the activator are in the cluster: a watcher polls the old processes' readiness every
POLL_S and new requests go to the old process while its last answer was 200, to the new one
after. A request answered 429/503 with Retry-After is sent again to whichever is ready (that is
what the header asks; it counts as a deliberate answer, not a failure); any other answer, and
any connection error, is recorded as what it was.

The probes: >= 400 requests, a mix of SSE streams (`/v1/completions`, must end with
``data: [DONE]``), JSON completions, request CloudEvents (`dev.llmfn.completion.requested.v1`
to generate's `/`, answered with a reply event) and embeddings, plus LONG_STREAMS streams
started before the SIGTERM that are still running when it arrives. generate runs the tiny
synthetic LLaMA (file://), embed MiniLM; both send their inference events to one audit (on the
`ferretdb` fixture), which must have every one of the answered requests.

Required (asserted): every request the old process took in before its SIGTERM completes
correctly (one sent just before it that arrived after it gets 503 + Retry-After and is sent
again: see accepted_before_sigterm); no probe ends failed (after Retry-After / failover); no
connection reset; the old process exits 0 within SHUTDOWN_GRACE_S + EXIT_MARGIN_S; audit has
every event; readiness is not-ready (any non-2xx or no answer: what the kubelet counts as
failure) within READY_FLIP_S, first seen as an answer, not as a closed port (SHUTDOWN_MIN_S
keeps the port open). What the readiness probe answered, what new requests to the
draining process got, and the timings are written to .state/load/restart-<path>.json and
printed (docs/load.md).

Both paths drain before they stop listening (llmfn.gunicorn_worker; llmfn.function's SIGTERM
handler in front of hypercorn's), so new requests during the drain get 503 + Retry-After.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo
import pytest
import requests

from scripts import procs
from scripts.procs import ServerProcess
from tests.support.audit import audit_env, start_gunicorn, unique_db
from tests.support.models import model_file

ROOT = Path(__file__).resolve().parents[1]
PROBES = 440
CONCURRENCY = 6
LONG_STREAMS = 4
LONG_TOKENS = 800  # the tiny model: several seconds past the SIGTERM (hypercorn's 3 s)
GRACE_S = 10
EXIT_MARGIN_S = 10  # past the grace: SHUTDOWN_MIN_S, a cancelled response's tail, the flush
READY_FLIP_S = 2.0
POLL_S = 0.02
BODY_CHARS = 400  # of a failed attempt's body: the whole OpenAI error body (its code is read)
REQUEST_TIMEOUT = (3.0, 60.0)  # connect, read
EVENTS_S = 30
MIX = {"stream": 0.3, "json": 0.2, "event": 0.2, "embed": 0.3}
FUNCTION_OF = {"stream": "generate", "json": "generate", "event": "generate", "long": "generate",
               "embed": "embed"}


@pytest.fixture(scope="module")
def audit(ferretdb, tmp_path_factory):
    db = unique_db()
    proc = start_gunicorn(tmp_path_factory.mktemp("audit"), audit_env(ferretdb.uri, db))
    yield proc, ferretdb.uri, db
    proc.stop()


def function_env(fn: str, tmp: Path, sink: str) -> dict[str, str]:
    model = (model_file("tiny-llama.gguf", "make_tiny_model.py") if fn == "generate"
             else model_file("all-minilm-l6-v2-f16.gguf", "convert_minilm.py"))
    env = {"MODEL_URI": f"file://{model}", "MODEL_CACHE_DIR": str(tmp / "cache"),
           "N_THREADS": "1", "OMP_WAIT_POLICY": "passive", "QUEUE_SIZE": "32",
           "SHUTDOWN_GRACE_S": str(GRACE_S), "K_SINK": sink, "FUNCTION_NAME": fn,
           "EVENTS_FLUSH_S": "5", "PYTHONUNBUFFERED": "1"}
    if fn == "generate":
        env.update(SLOTS="4", N_CTX="1024")
    return env


def start(path: str, fn: str, tag: str, tmp: Path, sink: str) -> ServerProcess:
    env = function_env(fn, tmp, sink)
    log = tmp / f"{fn}-{tag}.log"
    if path == "gunicorn":
        return procs.gunicorn_server(fn, procs.free_port(), env=env, log_path=log,
                                     name=f"{fn}-{tag}").start()
    return procs.func_python_server(fn, procs.free_port(), env=env, log_path=log,
                                    name=f"{fn}-{tag}").start()


def error_kind(err: BaseException) -> str:
    """refused | reset | timeout | closed | other:<name>, from the exception chain."""
    seen, todo = [], [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, *[a for a in getattr(e, "args", ())
                                               if isinstance(a, BaseException)]]
        todo += [getattr(e, "reason", None)]
    names = " ".join(type(e).__name__ for e in seen) + " " + " ".join(str(e) for e in seen)
    if "ConnectionRefused" in names or "Connection refused" in names:
        return "refused"
    if "ConnectionReset" in names or "Connection reset" in names:
        return "reset"
    if "Timeout" in names or "timed out" in names:
        return "timeout"
    if "RemoteDisconnected" in names or "IncompleteRead" in names \
            or "ChunkedEncodingError" in names or "ProtocolError" in names:
        return "closed"
    return f"other:{type(err).__name__}"


class Router:
    """Client-side routing: the old process while its readiness answers 200, else the new one.
    Records every readiness answer of the old processes after the SIGTERM."""

    def __init__(self, old: dict[str, ServerProcess], new: dict[str, ServerProcess]):
        self.old, self.new = old, new
        self.ready = {fn: True for fn in old}
        self.t_sigterm: float | None = None
        self.after: dict[str, list[tuple[float, int | None, str]]] = {fn: [] for fn in old}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(fn,), daemon=True)
                         for fn in old]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _watch(self, fn: str) -> None:
        server = self.old[fn]
        while not self._stop.is_set():
            status, text = procs.http_status(server.host, server.port, procs.READY_PATH,
                                             timeout_s=0.5)
            now = time.monotonic()
            if self.t_sigterm is not None:
                self.after[fn].append((now - self.t_sigterm, status, text[:60]))
            self.ready[fn] = status == 200
            if not self.ready[fn] and self.t_sigterm is not None and not server.running:
                return
            time.sleep(POLL_S)

    def pick(self, fn: str) -> tuple[str, ServerProcess]:
        return ("old", self.old[fn]) if self.ready[fn] else ("new", self.new[fn])


def send(kind: str, url: str, i: int, session: requests.Session) -> dict:
    """One attempt: status, Retry-After, request id, and whether the answer is complete."""
    if kind in ("stream", "long"):
        tokens = LONG_TOKENS if kind == "long" else 48
        resp = session.post(f"{url}/v1/completions", stream=True, timeout=REQUEST_TIMEOUT,
                            json={"prompt": f"{i} Once upon a time", "max_tokens": tokens,
                                  "temperature": 0.8, "seed": i, "stream": True})
        if resp.status_code != 200:
            return answer(resp, False)
        lines = [line for line in resp.iter_lines() if line.startswith(b"data: ")]
        return {**answer(resp, bool(lines) and lines[-1] == b"data: [DONE]", body=False),
                "first_token": len(lines) > 1}
    if kind == "json":
        resp = session.post(f"{url}/v1/completions", timeout=REQUEST_TIMEOUT,
                            json={"prompt": f"{i} The answer is", "max_tokens": 16,
                                  "temperature": 0.8, "seed": i})
        ok = resp.status_code == 200 and len(resp.json()["choices"]) == 1
    elif kind == "event":
        event_id, source = f"probe-{uuid.uuid4().hex}", "/tests/graceful-restart"
        headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": source,
                   "ce-type": "dev.llmfn.completion.requested.v1",
                   "Content-Type": "application/json"}
        resp = session.post(f"{url}/", timeout=REQUEST_TIMEOUT, headers=headers,
                            data=json.dumps({"prompt": f"{i} Hello", "max_tokens": 8}))
        # a reply event (binary mode) with the completion; a failed request's reply has "error"
        ok = (resp.status_code == 200 and "ce-type" in resp.headers
              and "choices" in resp.json())
        # its inference event's request id derives from (source, id) (llmfn/event_requests.py)
        rid = hashlib.sha256(f"{source}\x1f{event_id}".encode()).hexdigest()[:32]
        return answer(resp, ok, request_id=rid)
    else:
        resp = session.post(f"{url}/v1/embeddings", timeout=REQUEST_TIMEOUT,
                            json={"input": [f"probe {i}", "a second sentence"]})
        ok = resp.status_code == 200 and len(resp.json()["data"]) == 2
    return answer(resp, ok)


def answer(resp: requests.Response, ok: bool, *, request_id: str | None = None,
           body: bool = True) -> dict:
    """What one attempt got: status, Retry-After, request id (the server's, else
    ``request_id``), whether it is complete, and, when not, the body (``body``: a stream
    already read has none left) and its error ``code``."""
    out = {"status": resp.status_code, "retry_after": resp.headers.get("Retry-After"),
           "request_id": resp.headers.get("X-Request-Id") or request_id, "ok": ok}
    if not ok and body:
        out["body"] = resp.text[:BODY_CHARS]
    out["code"] = error_code(out.get("body"))
    return out


def probe(kind: str, i: int, router: Router, local: threading.local,
          started: threading.Event | None = None) -> list[dict]:
    """One probe with Retry-After honoured and failover; every attempt recorded."""
    session = getattr(local, "session", None) or requests.Session()
    local.session = session
    attempts = []
    for _ in range(6):
        backend, server = router.pick(FUNCTION_OF[kind])
        t = time.monotonic()
        try:
            if kind == "long":
                out = send_long(server.url, i, session, started)
            else:
                out = send(kind, server.url, i, session)
        except (requests.RequestException, ValueError) as err:
            out = {"status": None, "error": error_kind(err), "ok": False}
            session.close()
            local.session = session = requests.Session()
        out.update(kind=kind, backend=backend, t_send=t, t_end=time.monotonic(),
                   shutting_down=out["status"] == 503 and out.get("code") == "shutting_down")
        attempts.append(out)
        if out["ok"]:
            break
        if out["status"] in (429, 503) and out.get("retry_after"):
            if router.pick(FUNCTION_OF[kind])[1] is server:  # nowhere else to go: wait
                time.sleep(min(float(out["retry_after"]), 2.0))
            continue
        if out["status"] is None and backend == "old" and router.t_sigterm is not None:
            time.sleep(POLL_S * 5)  # the draining process: let the router see it, fail over
            continue
        break
    return attempts


def error_code(body: str | None) -> str | None:
    """The OpenAI error body's ``code``, or None."""
    try:
        return json.loads(body)["error"]["code"]
    except (TypeError, ValueError, KeyError):
        return None


def send_long(url: str, i: int, session: requests.Session, started: threading.Event) -> dict:
    """A long stream: ``started`` is set once its first token arrived (accepted and running)."""
    resp = session.post(f"{url}/v1/completions", stream=True, timeout=REQUEST_TIMEOUT,
                        json={"prompt": f"{i} Once upon a time", "max_tokens": LONG_TOKENS,
                              "temperature": 0.8, "seed": i, "stream": True})
    if resp.status_code != 200:
        started.set()
        return answer(resp, False)
    last = None
    try:
        for line in resp.iter_lines():
            if line.startswith(b"data: {"):
                started.set()
            if line.startswith(b"data: "):
                last = line
    finally:
        started.set()
    return answer(resp, last == b"data: [DONE]", body=False)


def audit_has(uri: str, db: str, ids: set[str]) -> set[str]:
    """The ids of ``ids`` that audit has not recorded within EVENTS_S."""
    end = time.monotonic() + EVENTS_S
    while True:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            found = set(client[db].inference_events.distinct(
                "request_id", {"request_id": {"$in": sorted(ids)}}))
        missing = ids - found
        if not missing or time.monotonic() > end:
            return missing
        time.sleep(0.5)


def accepted_before_sigterm(a: dict, t_sig: float) -> bool:
    """Sent to the old process before its SIGTERM and taken in before it. The server answers
    503 `shutting_down` only to requests whose handling began after the signal
    (llmfn.webapp), so a request sent just before the SIGTERM that got there after it was not
    taken in: it counts with the new requests during the drain."""
    return a["backend"] == "old" and a["t_send"] < t_sig and not a["shutting_down"]


def summarize(path: str, attempts: list[dict], router: Router, exits: dict, missing: set,
              n_events: int) -> dict:
    t_sig = router.t_sigterm
    before = [a for a in attempts if accepted_before_sigterm(a, t_sig)]
    drain = [a for a in attempts if a["backend"] == "old" and not accepted_before_sigterm(a, t_sig)]

    def outcome(a):
        if a["ok"]:
            return "200 complete"
        if a["status"] in (429, 503) and a.get("retry_after"):
            return f"{a['status']} {a.get('code')} + Retry-After"
        return a.get("error") or f"{a['status']} {a.get('body', 'incomplete')[:80]}"

    def count(items):
        out: dict[str, int] = {}
        for a in items:
            out[outcome(a)] = out.get(outcome(a), 0) + 1
        return out

    readiness = {}
    for fn, seen in router.after.items():
        first_bad = next(((dt, st, tx) for dt, st, tx in seen if st != 200), None)
        answers: dict[str, int] = {}
        for _dt, st, tx in seen:
            key = f"{st} {tx}" if st is not None else tx
            answers[key] = answers.get(key, 0) + 1
        readiness[fn] = {"first_not_ready_s": None if first_bad is None else round(first_bad[0], 3),
                         "first_not_ready": None if first_bad is None else
                         (first_bad[1], first_bad[2]), "answers": answers}
    return {"path": path, "probes": len({(a["kind"], a.get("probe")) for a in attempts}),
            "attempts": len(attempts), "by_kind": count_kinds(attempts),
            "before_sigterm": count(before), "new_during_drain": count(drain),
            "to_new": count([a for a in attempts if a["backend"] == "new"]),
            "long_streams_end_after_sigterm_s": sorted(
                round(a["t_end"] - t_sig, 2) for a in attempts if a["kind"] == "long"),
            "readiness": readiness, "exits": exits, "events_checked": n_events,
            "events_missing": len(missing)}


def count_kinds(attempts):
    out: dict[str, int] = {}
    for a in attempts:
        out[a["kind"]] = out.get(a["kind"], 0) + 1
    return out


@pytest.mark.parametrize("path", ["gunicorn", "func-python"])
def test_graceful_restart(path, audit, tmp_path):
    audit_proc, uri, db = audit
    sink = f"{audit_proc.url}/"
    old = {fn: start(path, fn, "old", tmp_path, sink) for fn in ("generate", "embed")}
    new = {fn: start(path, fn, "new", tmp_path, sink) for fn in ("generate", "embed")}
    servers = [*old.values(), *new.values()]
    try:
        for server in servers:
            server.wait_ready(120)
        rng = random.Random(7)
        kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=PROBES)
        local = threading.local()
        results: dict[int, list[dict]] = {}
        done = threading.Semaphore(0)
        exits: dict[str, dict] = {}
        with Router(old, new) as router, ThreadPoolExecutor(CONCURRENCY + LONG_STREAMS) as pool:
            def run(i, kind, started=None):
                results[i] = probe(kind, i, router, local, started)
                for a in results[i]:
                    a["probe"] = i
                done.release()

            half = PROBES // 2
            futures = [pool.submit(run, i, k) for i, k in enumerate(kinds[:half])]
            for _ in range(half - LONG_STREAMS * 2):  # most of the first half answered
                assert done.acquire(timeout=120)
            started = [threading.Event() for _ in range(LONG_STREAMS)]
            futures += [pool.submit(run, PROBES + j, "long", started[j])
                        for j in range(LONG_STREAMS)]
            for ev in started:
                assert ev.wait(60), "a long stream never started"
            futures += [pool.submit(run, half + i, k) for i, k in enumerate(kinds[half:])]

            def stop(fn):
                t0 = time.monotonic()
                rc = old[fn].stop(GRACE_S + EXIT_MARGIN_S + 30)
                exits[fn] = {"rc": rc, "exit_s": round(time.monotonic() - t0, 2)}

            router.t_sigterm = time.monotonic()
            stoppers = [threading.Thread(target=stop, args=(fn,)) for fn in old]
            for t in stoppers:
                t.start()
            for f in futures:
                f.result(timeout=180)
            for t in stoppers:
                t.join(GRACE_S + EXIT_MARGIN_S + 60)
    finally:
        for server in servers:
            server.stop()
    attempts = [a for i in sorted(results) for a in results[i]]
    answered = {a["request_id"] for a in attempts if a["ok"] and a.get("request_id")}
    missing = audit_has(uri, db, answered)
    report = summarize(path, attempts, router, exits, missing, len(answered))
    out = ROOT / ".state" / "load" / f"restart-{path}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    logs = "\n".join(f"--- {s.name}\n{s.log_tail(1500)}" for s in old.values())

    assert len(results) >= 400 + LONG_STREAMS
    long_streams = [results[PROBES + j][0] for j in range(LONG_STREAMS)]
    assert all(a["backend"] == "old" for a in long_streams)  # accepted before the SIGTERM
    # Required, and met on both paths:
    assert not [a for a in attempts if a.get("error") == "reset"], (report, logs)
    for fn, ex in exits.items():
        assert ex["rc"] == 0 and ex["exit_s"] <= GRACE_S + EXIT_MARGIN_S, (fn, ex, logs)
        flip = report["readiness"][fn]["first_not_ready_s"]
        assert flip is not None and flip <= READY_FLIP_S, report["readiness"]
        # the router saw "not ready" while the port was still open (SHUTDOWN_MIN_S), not as a
        # closed port: what it sent meanwhile was answered, not reset
        _status, first = report["readiness"][fn]["first_not_ready"]
        assert not first.startswith(("ConnectionRefused", "ConnectionReset")), report["readiness"]
    assert not missing, (len(missing), report)
    # Required: every request the old process accepted before its SIGTERM completes, and no
    # probe ends failed (deliberate 429/503 + Retry-After are retried, not failures).
    violations = {}
    before = [a for a in attempts if accepted_before_sigterm(a, router.t_sigterm)]
    if not all(a["ok"] for a in before):
        violations["accepted before SIGTERM, not completed"] = report["before_sigterm"]
    failed = {i: r[-1] for i, r in results.items() if not r[-1]["ok"]}
    if failed:
        violations["probes failed"] = {i: (a["kind"], a["status"], a.get("error"), a.get("body"))
                                       for i, a in failed.items()}
    assert not violations, (violations, report, logs)
