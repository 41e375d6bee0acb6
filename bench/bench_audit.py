"""Audit benchmark: ingest throughput and KPI query latency on FerretDB (SQLite), bounded.

1. Starts its own FerretDB; bulk-inserts ``--kpi-docs`` inference documents (insert_many)
   spread over the last 24 h, then rebuilds the KPI rollups from them (`function.rebuild`,
   timed: the backfill an operator runs after loading events).
2. Starts the audit function under gunicorn (as `make run` does).
3. Ingest: ``--events`` binary CloudEvents POSTed by ``--concurrency`` threads -> events/s.
4. KPI latency, ``--kpi-queries`` each of GET /kpis (24 h window, every document), the last
   minute, and /kpis/timeseries?bucket=5m -> p50/p95/max: first right after the ingest (the
   commit parts not yet compacted), then once compaction has emptied the parts collection.
Every phase stops at ``--deadline-s``. Results: stdout and .state/bench/audit.json.
Targets (docs/audit.md): >= 500 events/s, /kpis p95 <= 100 ms.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pymongo
import requests
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from bench.common import (
    HOST,
    REPO_ROOT,
    STATE,
    figure_footer,
    free_port,
    gunicorn_server,
    log,
    machine_line,
    percentile,
    save_figure,
)
from scripts import services

AUDIT_DIR = REPO_ROOT / "functions" / "audit"
TYPE = "dev.llmfn.inference.completed.v1"
UTC = dt.UTC


def record(i: int, t: dt.datetime, rng: random.Random) -> dict:
    fn = "generate" if i % 3 else "embed"
    status = 500 if rng.random() < 0.02 else 200
    return {"request_id": uuid.uuid4().hex, "function": fn,
            "model": rng.choice(["smollm2-135m", "tiny-llama"]) if fn == "generate"
            else "all-minilm-l6-v2", "model_sha256": "ab" * 32, "service": fn,
            "revision": f"{fn}-00001", "endpoint": "/v1/chat/completions", "status": status,
            "error_code": "internal_error" if status >= 500 else None,
            "prompt_tokens": rng.randint(5, 200), "completion_tokens": rng.randint(0, 256),
            "input_count": 1, "ttft_s": rng.uniform(0.01, 0.5), "duration_s": rng.uniform(0.05, 5),
            "tokens_per_s": rng.uniform(20, 80), "finish_reason": "stop",
            "cold_start": rng.random() < 0.01, "stream": True, "time": t.isoformat()}


def bulk_insert(uri: str, db: str, n: int, deadline: float) -> dict:
    """``n`` stored-form documents over the last 24 h with insert_many (chunks of 5000)."""
    rng = random.Random(1)
    now = dt.datetime.now(UTC)
    col = pymongo.MongoClient(uri, tz_aware=True)[db]["inference_events"]
    t0, done = time.perf_counter(), 0
    while done < n and time.monotonic() < deadline:
        chunk = []
        for i in range(done, min(n, done + 5000)):
            t = now - dt.timedelta(seconds=rng.uniform(60, 86000))
            d = record(i, t, rng)
            ce = {"type": TYPE, "source": "/bench/bulk", "id": str(i), "specversion": "1.0"}
            chunk.append({**d, "_id": f"/bench/bulk\x1f{i}", "time": t, "ce": ce,
                          "error": int(d["status"] >= 400), "received_at": now})
        col.insert_many(chunk, ordered=False)
        done += len(chunk)
    return {"docs": done, "seconds": time.perf_counter() - t0}


def ingest(base: str, n: int, concurrency: int, deadline: float) -> dict:
    rng = random.Random(2)
    now = dt.datetime.now(UTC)
    messages = []
    for i in range(n):
        ev = CloudEvent({"type": TYPE, "source": "/bench/ingest", "id": f"ev-{i}",
                         "datacontenttype": "application/json"}, record(i, now, rng))
        msg = to_binary_event(ev)
        messages.append((dict(msg.headers), msg.body))
    local = threading.local()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    host, port = base.rsplit("//", 1)[1].split(":")

    def send(item):
        # http.client keep-alive per thread: the sender shares the 2 cores with the server,
        # so it is kept light (requests costs ~3x the client CPU per event).
        if time.monotonic() > deadline:
            return None
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/", body=item[1], headers=item[0])
        resp = conn.getresponse()
        resp.read()
        with lock:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        lat = [x for x in pool.map(send, messages) if x is not None]
    wall = time.perf_counter() - t0
    return {"events": len(lat), "seconds": wall, "events_per_s": len(lat) / wall if wall else None,
            "concurrency": concurrency, "statuses": statuses,
            "latency_p50_s": percentile(lat, 0.5), "latency_p95_s": percentile(lat, 0.95)}


def rebuild(uri: str, db: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "function.rebuild"], cwd=AUDIT_DIR, check=True,
                         env={**os.environ, "MONGODB_URI": uri, "MONGODB_DATABASE": db},
                         capture_output=True, text=True, timeout=1800)
    return {"seconds": time.perf_counter() - t0, "output": out.stdout.strip()}


def wait_compacted(uri: str, db: str, deadline_s: float) -> dict:
    """Wait (bounded) until the commit parts are compacted into minute rollups."""
    col = pymongo.MongoClient(uri)[db]["kpi_parts"]
    t0 = time.monotonic()
    left = col.count_documents({})
    while left and time.monotonic() - t0 < deadline_s:
        time.sleep(1)
        left = col.count_documents({})
    return {"parts_left": left, "waited_s": time.monotonic() - t0}


def queries(base: str, n: int, deadline: float) -> dict:
    return {"kpis": query(base, "/kpis", n, deadline),
            "kpis_last_minute": query(base, "/kpis?since=" + str(time.time() - 60), n, deadline),
            "timeseries": query(base, "/kpis/timeseries?bucket=5m", n, deadline)}


def query(base: str, path: str, n: int, deadline: float) -> dict:
    lat, counts, failures = [], set(), []
    with requests.Session() as s:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            r = s.get(base + path, timeout=300)
            if r.status_code != 200:
                failures.append({"status": r.status_code, "after_s": time.perf_counter() - t0,
                                 "body": r.text[:300]})
                continue
            lat.append(time.perf_counter() - t0)
            body = r.json()
            counts.add(body["total"]["count"] if "total" in body
                       else sum(b["count"] for b in body["series"]))
    return {"path": path, "queries": len(lat), "p50_s": percentile(lat, 0.5),
            "p95_s": percentile(lat, 0.95), "max_s": max(lat) if lat else None,
            "events_counted": sorted(counts), "failures": failures}


PLOT = REPO_ROOT / "docs" / "img" / "bench-audit.png"


def plot(results: dict, out: Path = PLOT) -> None:
    """Ingest events/s and KPI query latency (after the ingest, compacted), with the targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.5, 4), gridspec_kw={"width_ratios": [1, 3]})
    ing = results["ingest"]
    ax1.bar(["ingest"], [ing["events_per_s"]], color="tab:blue")
    ax1.axhline(500, color="tab:red", linestyle="--", label="target 500/s")
    ax1.set(ylabel="events/s", title=f"{ing['events']} events, {ing['concurrency']} senders")
    ax1.set_ylim(0, max(ing["events_per_s"], 500) * 1.3)  # the legend above the bar and line
    ax1.legend(fontsize=8)
    names = list(results["after_ingest"])
    width = 0.2
    for j, (phase, stat) in enumerate((("after_ingest", "p50_s"), ("after_ingest", "p95_s"),
                                       ("compacted", "p50_s"), ("compacted", "p95_s"))):
        values = [(results[phase][n][stat] or 0) * 1000 for n in names]
        ax2.bar([i + (j - 1.5) * width for i in range(len(names))], values, width,
                label=f"{phase.replace('_', ' ')} {stat[:3]}")
    ax2.axhline(100, color="tab:red", linestyle="--", label="target p95 100 ms")
    ax2.set_xticks(range(len(names)), names, fontsize=8)
    total = results["bulk_insert"]["docs"] + ing["stored"]
    ax2.set(ylabel="ms", title=f"KPI queries over {total:,} stored events")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
    args = results.get("args") or {}
    command = "make bench-audit" + (f' AUDIT_BENCH_ARGS="--kpi-docs {args["kpi_docs"]} '
                                    f'--events {args["events"]}"' if args else "")
    stamp = {"date": (results.get("when") or "")[:16].replace("T", " "),
             "machine": results.get("machine")}
    save_figure(fig, out, footer=figure_footer({k: v for k, v in stamp.items() if v}, command))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot-only", default=None, metavar="JSON",
                    help="draw docs/img/bench-audit.png from an earlier run's results")
    ap.add_argument("--events", type=int, default=3000, help="events sent in the ingest phase")
    ap.add_argument("--concurrency", type=int, default=8, help="sender threads")
    ap.add_argument("--threads", type=int, default=8, help="gunicorn gthread threads")
    ap.add_argument("--kpi-docs", type=int, default=100_000, help="documents bulk-inserted")
    ap.add_argument("--kpi-queries", type=int, default=20, help="repetitions of each query")
    ap.add_argument("--deadline-s", type=float, default=600.0, help="bound of each phase, s")
    ap.add_argument("--out", default=str(STATE / "bench" / "audit.json"))
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text()))
        return 0

    services.ensure_binaries()
    state = STATE / "bench" / f"audit-{uuid.uuid4().hex[:8]}"
    fdb = services.FerretDBServer(state, port=free_port())
    fdb.start().wait_ready(deadline_s=60)
    db = "bench_audit"
    port = free_port()
    env = {"MONGODB_URI": fdb.uri, "MONGODB_DATABASE": db, "GUNICORN_THREADS": str(args.threads),
           "LOG_LEVEL": "warning"}
    audit = gunicorn_server(port, env, "audit", extra=("--access-logfile", "/dev/null"))
    results: dict = {"when": dt.datetime.now(UTC).isoformat(), "machine": machine_line(),
                     "args": vars(args)}
    try:
        log(f"bulk insert {args.kpi_docs} docs")
        results["bulk_insert"] = bulk_insert(fdb.uri, db, args.kpi_docs,
                                             time.monotonic() + args.deadline_s)
        log("rebuild the rollups from them")
        results["rebuild"] = rebuild(fdb.uri, db)
        log(json.dumps(results["rebuild"]))
        audit.start()
        audit.wait_ready(deadline_s=120)
        base = f"http://{HOST}:{port}"
        log(f"ingest {args.events} events, {args.concurrency} senders")
        results["ingest"] = ingest(base, args.events, args.concurrency,
                                   time.monotonic() + args.deadline_s)
        stored = pymongo.MongoClient(fdb.uri)[db]["inference_events"].count_documents(
            {"ce.source": "/bench/ingest"})
        results["ingest"]["stored"] = stored
        log(json.dumps(results["ingest"]))
        log("KPI queries right after the ingest")
        results["after_ingest"] = queries(base, args.kpi_queries,
                                          time.monotonic() + args.deadline_s)
        results["compaction"] = wait_compacted(fdb.uri, db, 180)
        log(f"KPI queries once compacted {results['compaction']}")
        results["compacted"] = queries(base, args.kpi_queries,
                                       time.monotonic() + args.deadline_s)
    finally:
        audit.stop()
        fdb.stop()
        shutil.rmtree(state, ignore_errors=True)  # the 100k-document FerretDB data
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    plot(results)
    ing = results["ingest"]
    total = results["bulk_insert"]["docs"] + ing["stored"]
    print(f"\ningest: {ing['events_per_s']:.0f} events/s ({ing['events']} events, "
          f"{ing['concurrency']} senders; target >= 500)")
    print(f"rebuild of {results['bulk_insert']['docs']} events: "
          f"{results['rebuild']['seconds']:.1f} s")
    for phase in ("after_ingest", "compacted"):
        for name, q in results[phase].items():
            if q["p50_s"] is None:
                print(f"{phase} {name}: failed {q['failures'][:1]}")
                continue
            print(f"{phase} {name} over {total} docs: p50 {q['p50_s'] * 1000:.0f} ms, "
                  f"p95 {q['p95_s'] * 1000:.0f} ms, counted {q['events_counted']} "
                  f"(target p95 <= 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
