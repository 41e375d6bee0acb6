#!/usr/bin/env python3
"""Cold start of the generate function from a real MinIO, split into download, verify, load.

For each run: our function under gunicorn (as `make run` starts it) with MODEL_URI=s3://...
and an empty MODEL_CACHE_DIR ("cold cache"), then again with the cache it just filled ("warm
cache"), then llama-server on the same local file (it has no download). Start-to-ready is
process start until the readiness URL answers 200 (ours /health/readiness, llama-server
/health), polled every 20 ms. The phases come from our ``llmfn_cold_start_seconds{phase=...}``
on /metrics after readiness; "other" is start-to-ready minus the phases (interpreter and
imports, gunicorn, the fork, polling).

    .venv/bin/python bench/bench_coldstart.py [--runs 5]

Writes .state/bench/coldstart.json and the "Cold-start phases" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

import common  # noqa: E402
from common import fmt, log, summary  # noqa: E402

import services  # noqa: E402
import upload_model  # noqa: E402

BUCKET, KEY = "bench", "smollm2-135m-instruct-q4_1.gguf"
PHASES = ("download", "verify", "load")
_METRIC = re.compile(r'^llmfn_cold_start_seconds\{phase="(\w+)"\} ([0-9.eE+-]+)$', re.M)


def phases(port: int) -> dict[str, float]:
    status, body = common.http_get(f"http://{common.HOST}:{port}/metrics", timeout_s=5.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return {k: float(v) for k, v in _METRIC.findall(body.decode())}


def first_token_s(port: int) -> float:
    """Time to first token of the process's first request (SSE, 8 tokens)."""
    t = common.post_completion(port, {"prompt": "Once upon a time", "max_tokens": 8,
                                      "temperature": 0, "stream": True})
    return t.ttft_s


def ours_once(env: dict) -> dict:
    srv = common.gunicorn_server(common.free_port(), env)
    try:
        ready_s = srv.start().wait_ready()
        got = phases(srv.port)
        got["first_token"] = first_token_s(srv.port)
    finally:
        srv.stop()
    got["ready"] = ready_s
    got["other"] = ready_s - sum(got.get(p, 0.0) for p in PHASES)
    return got


def llama_server_once(model: Path, n_ctx: int, threads: int) -> dict:
    srv = common.llama_server(common.free_port(), model, n_ctx=n_ctx, threads=threads)
    try:
        ready_s = srv.start().wait_ready()
        return {"ready": ready_s, "first_token": first_token_s(srv.port)}
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 30:
        ap.error("--runs must be 1..30")

    model = common.smollm2_path()
    state = common.STATE / "bench" / "coldstart"
    cache = state / "cache"
    services.ensure_binaries()
    minio = services.MinioServer(state / "minio", common.HOST, common.free_port(),
                                 log_path=common.LOG_DIR / "coldstart-minio.log")
    results = {"cold cache": [], "warm cache": [], "llama-server": []}
    with minio:
        upload_model.upload(minio.client(), str(model), BUCKET, KEY)
        env = common.generate_env({"MODEL_URI": f"s3://{BUCKET}/{KEY}",
                                   "MODEL_CACHE_DIR": str(cache), "SHUTDOWN_GRACE_S": "1",
                                   **minio.client_env()},
                                  n_ctx=args.n_ctx, threads=args.threads)
        for i in range(args.runs):
            shutil.rmtree(cache, ignore_errors=True)
            results["cold cache"].append(ours_once(env))
            results["warm cache"].append(ours_once(env))
            results["llama-server"].append(llama_server_once(model, args.n_ctx, args.threads))
            log(f"run {i + 1}/{args.runs}: " + ", ".join(
                f"{k} {v[-1]['ready']:.2f} s" for k, v in results.items()))
    data = {"machine": common.machine_line(), "model": model.name,
            "model_bytes": model.stat().st_size, "runs": args.runs, "results": results}
    common.publish("coldstart", data, render, no_doc=args.no_doc)
    return 0


def render(d: dict) -> str:
    cols = (*PHASES, "other", "ready", "first_token")
    lines = ["| scenario | download (s) | verify (s) | load (s) | other (s) | start to ready (s) "
             "| first request: time to first token (s) |",
             "|---|---|---|---|---|---|---|"]
    med = {}
    for name, runs in d["results"].items():
        cells = []
        for c in cols:
            vals = [r[c] for r in runs if c in r]
            s = summary(vals)
            med[(name, c)] = s["median"]
            cells.append(fmt(s, digits=3) if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = med[("llama-server", "ready")]
    ratios = ", ".join(f"{n} {med[(n, 'ready')] / ref:.2f}" for n in ("cold cache", "warm cache"))
    return "\n".join([
        "## Cold-start phases",
        "",
        f"Machine: {d['machine']}, shared with other jobs. Model {d['model']} "
        f"({d['model_bytes'] / 2**20:.1f} MiB) from a local MinIO (loopback). {d['runs']} runs "
        "of each scenario, interleaved; median (min-max).",
        "",
        *lines,
        "",
        "- cold cache: empty `MODEL_CACHE_DIR`: ranged GETs from MinIO, sha256, rename, load.",
        "- warm cache: the file cached by the previous run: a HEAD request, the sidecar "
        "`<file>.sha256` matches size, mtime and sha256, so no download and no re-hash; load.",
        "- llama-server: the same local file (no download, no checksum), its default warm-up "
        "run included; ready when /health answers 200.",
        "- other: start to ready minus the phases: Python start-up and imports, gunicorn, the "
        "worker fork and the 20 ms readiness polling.",
        "- first request: right after ready, a 4-token prompt, SSE: time to its first token "
        "(the first request of a process; llama-server ran a warm-up at start).",
        "",
        f"Start to ready, ours / llama-server (medians): {ratios}.",
        "",
        "Reproduce: `make bench-coldstart` (`bench/bench_coldstart.py`).",
    ])


if __name__ == "__main__":
    sys.exit(main())
