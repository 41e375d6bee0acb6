#!/usr/bin/env python3
"""Compare asgiref's WsgiToAsgi with llmfn's WSGIBridge behind Hypercorn (func-python's server).

A tiny Flask app: /stream yields 20 chunks 50 ms apart (the first at once), /ping answers "pong".
Each bridge is served by Hypercorn on a free 127.0.0.1 port, and for each we measure
  1. time to first chunk of /stream and time to the whole stream (streamed, not buffered?),
  2. /ping latency alone and while a /stream is running (served concurrently?),
  3. a client that reads 3 chunks then closes: chunks the generator still produced afterwards,
     whether it saw GeneratorExit, and how long it kept running.
Every wait has a timeout; runs are bounded by --runs. Prints a Markdown table (and --json).

    PYTHONPATH=llmfn/src .venv/bin/python scripts/bench_bridge.py --runs 5
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from importlib.metadata import version

import flask
import httpx

# the repo root: the Hypercorn-in-a-thread helper the tests use too
from scripts.hypercorn_thread import hypercorn_server

CHUNKS = 20
GAP_S = 0.05
READ_BEFORE_CLOSE = 3
TIMEOUT_S = 10.0
SETTLE_S = 3.0  # after a disconnect, how long to watch the generator (> the whole stream)


class Probe:
    """Server-side record of one /stream generator."""

    def __init__(self):
        self.produced: list[float] = []   # monotonic time of each yield
        self.closed_at: float | None = None  # GeneratorExit seen
        self.ended = threading.Event()     # finished or closed


def make_app(probes: dict[str, Probe]) -> flask.Flask:
    app = flask.Flask("bench")

    @app.get("/ping")
    def ping():
        return "pong"

    @app.get("/stream")
    def stream():
        probe = probes.setdefault(flask.request.args.get("run", ""), Probe())

        def gen():
            try:
                for i in range(CHUNKS):
                    if i:
                        time.sleep(GAP_S)
                    probe.produced.append(time.monotonic())
                    yield f"data: chunk {i}\n\n"
            except GeneratorExit:
                probe.closed_at = time.monotonic()
                raise
            finally:
                probe.ended.set()
        return flask.Response(gen(), mimetype="text/event-stream")
    return app


def measure_stream(url: str, run: str) -> dict:
    with httpx.Client(timeout=TIMEOUT_S) as c:
        t0 = time.monotonic()
        first = None
        n = 0
        with c.stream("GET", f"{url}/stream?run={run}") as r:
            for raw in r.iter_raw():
                if first is None:
                    first = time.monotonic() - t0
                n += raw.count(b"data: ")
        return {"ttfc_s": first, "total_s": time.monotonic() - t0, "chunks": n}


def measure_ping(url: str) -> float:
    with httpx.Client(timeout=TIMEOUT_S) as c:
        t0 = time.monotonic()
        assert c.get(url + "/ping").text == "pong"
        return time.monotonic() - t0


def measure_ping_during_stream(url: str, run: str, probes: dict[str, Probe]) -> dict:
    """Start a /stream, wait for its first chunk, time /ping; did the generator still run?"""
    first_chunk = threading.Event()
    done = threading.Event()

    def reader():
        try:
            with httpx.Client(timeout=TIMEOUT_S) as c, \
                    c.stream("GET", f"{url}/stream?run={run}") as r:
                for _ in r.iter_raw():
                    first_chunk.set()
        finally:
            done.set()
    threading.Thread(target=reader, daemon=True).start()
    if not first_chunk.wait(TIMEOUT_S):
        raise RuntimeError("no first chunk")
    try:
        ping_s = measure_ping(url)
    except httpx.TimeoutException:
        ping_s = None
    # server-side truth: had the stream's generator ended when /ping's answer arrived?
    concurrent = not probes[run].ended.is_set()
    done.wait(TIMEOUT_S + 2)
    return {"ping_s": ping_s, "while_generator_ran": concurrent}


def measure_disconnect(url: str, run: str, probes: dict[str, Probe]) -> dict:
    with httpx.Client(timeout=TIMEOUT_S) as c:
        with c.stream("GET", f"{url}/stream?run={run}") as r:
            it = r.iter_raw()
            got = 0
            while got < READ_BEFORE_CLOSE:
                got += next(it).count(b"data: ")
        closed = time.monotonic()  # leaving the block closed the connection mid-stream
    probe = probes[run]
    probe.ended.wait(SETTLE_S)
    after = sum(1 for t in probe.produced if t > closed)
    return {"produced_after_close": after, "produced_total": len(probe.produced),
            "generator_exit": probe.closed_at is not None,
            "ran_on_s": ((probe.closed_at or probe.produced[-1]) - closed)
            if probe.ended.is_set() else None}


def bench(name: str, asgi_app, probes: dict, runs: int) -> dict:
    res: dict = {"stream": [], "ping_idle": [], "ping_busy": [], "disconnect": []}
    with hypercorn_server(asgi_app, deadline_s=TIMEOUT_S, graceful_timeout_s=2.0) as url:
        for i in range(runs):
            res["stream"].append(measure_stream(url, f"{name}-s{i}"))
            res["ping_idle"].append(measure_ping(url))
            res["ping_busy"].append(measure_ping_during_stream(url, f"{name}-p{i}", probes))
            res["disconnect"].append(measure_disconnect(url, f"{name}-d{i}", probes))
            time.sleep(SETTLE_S if i + 1 < runs else 0)  # let a still-running generator end
    return res


def ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return (f"{1000 * statistics.median(values):.1f} "
            f"({1000 * min(values):.1f}–{1000 * max(values):.1f})")


def table(results: dict[str, dict], runs: int) -> str:
    rows = [("time to first chunk, ms", lambda r: ms([s["ttfc_s"] for s in r["stream"]])),
            ("whole /stream (20 chunks), ms", lambda r: ms([s["total_s"] for s in r["stream"]])),
            ("chunks received", lambda r: ",".join(str(s["chunks"]) for s in r["stream"])),
            ("/ping alone, ms", lambda r: ms(r["ping_idle"])),
            ("/ping during a stream, ms", lambda r: ms([p["ping_s"] for p in r["ping_busy"]])),
            ("/ping answered while the stream's generator still ran",
             lambda r: f"{sum(p['while_generator_ran'] for p in r['ping_busy'])}/{runs}"),
            ("chunks produced after client closed",
             lambda r: ",".join(str(d["produced_after_close"]) for d in r["disconnect"])),
            ("generator saw GeneratorExit",
             lambda r: f"{sum(d['generator_exit'] for d in r['disconnect'])}/{runs}"),
            ("generator ran on after close, ms",
             lambda r: ms([d["ran_on_s"] for d in r["disconnect"]]))]
    names = list(results)
    out = [f"| measure (median (min–max) over {runs} runs) | {' | '.join(names)} |",
           "|---|" + "---|" * len(names)]
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(fn(results[n]) for n in names) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions per bridge (1..50)")
    ap.add_argument("--workers", type=int, default=8, help="WSGIBridge max_workers")
    ap.add_argument("--json", help="also write raw results to this file")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 50))

    from asgiref.wsgi import WsgiToAsgi

    from llmfn.asgi import WSGIBridge

    results = {}
    probes_a: dict[str, Probe] = {}
    results[f"asgiref {version('asgiref')} WsgiToAsgi"] = bench(
        "asgiref", WsgiToAsgi(make_app(probes_a)), probes_a, runs)
    probes_b: dict[str, Probe] = {}
    bridge = WSGIBridge(make_app(probes_b), max_workers=args.workers)
    try:
        results["llmfn WSGIBridge"] = bench("bridge", bridge, probes_b, runs)
    finally:
        bridge.shutdown(wait=True)

    print(f"Python {platform.python_version()}, hypercorn {version('hypercorn')}, "
          f"flask {version('flask')}, {CHUNKS} chunks {int(GAP_S * 1000)} ms apart, "
          f"close after {READ_BEFORE_CLOSE} chunks\n")
    print(table(results, runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
