#!/usr/bin/env python3
"""`make bench-embed`: embeddings/s of the embed function against its baselines.

1. Batch throughput, 32 inputs per request, one client: the function over HTTP (gunicorn, as
   `make run` and the container run it; base64, as the openai client asks by default) vs
   llama-cpp-python in-process (``Llama.embed``, same model and settings) vs llama.cpp's
   ``llama-server --embeddings`` (if scripts/build_llama_server.sh built it).
2. Dynamic batching: 8 concurrent clients each sending one input per request, against the
   function with BATCH_WINDOW_MS=5 (default) and with BATCH_WINDOW_MS=0 (no merging).

Measurements are interleaved over ``--rounds`` so load from elsewhere hits all of them alike;
each runs ``--seconds`` and at most ``--max-requests``. Writes JSON to ``--out``.
Usage: bench_embed.py [--rounds 3] [--seconds 5] [--out .state/bench/embed.json]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from scripts import procs
from scripts.procs import LLAMA_SERVER, ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]

MODEL = ROOT / ".state" / "models" / "all-minilm-l6-v2-f16.gguf"
GOLDEN = ROOT.parent / "shared" / "golden" / "minilm_reference_embeddings.json"
BATCH = 32
CLIENTS = 8
# The function's defaults (functions/embed/function/settings.py), used for every contender.
N_THREADS, N_BATCH = 2, 2048


def corpus() -> list[str]:
    """32 distinct sentences of 5-30 tokens (the reference texts plus variations)."""
    base = [t for t in (it["text"] for it in json.loads(GOLDEN.read_text())["items"])
            if 0 < len(t) < 200]
    return [f"{base[i % len(base)]} (variant {i})" for i in range(BATCH)]


def log(msg: str) -> None:
    print(f"bench-embed: {msg}", file=sys.stderr, flush=True)


def run_for(seconds: float, max_calls: int, call) -> tuple[int, float]:
    """Call ``call()`` (returns items done) until the time or call budget is spent."""
    done, calls, t0 = 0, 0, time.perf_counter()
    while calls < max_calls and time.perf_counter() - t0 < seconds:
        done += call()
        calls += 1
    return done, time.perf_counter() - t0


# -- contenders ---------------------------------------------------------------------------------
class InProcess:
    name = "in-process llama-cpp-python"

    def __init__(self):
        import llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(MODEL), embedding=True, n_ctx=N_BATCH,
                                   n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=N_THREADS,
                                   n_threads_batch=N_THREADS, flash_attn=True, verbose=False)

    def batch(self, texts: list[str]) -> int:
        return len(self.llm.embed(texts, normalize=True))


class HTTP:
    """An OpenAI-compatible /v1/embeddings server; answers decoded like the openai client."""

    def __init__(self, name: str, url: str, encoding: str = "base64"):
        self.name, self.url, self.encoding = name, url, encoding
        self.session = requests.Session()

    def batch(self, texts) -> int:
        r = self.session.post(f"{self.url}/v1/embeddings", timeout=60,
                              json={"input": texts, "encoding_format": self.encoding})
        r.raise_for_status()
        data = r.json()["data"]
        if self.encoding == "base64":
            vecs = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
        else:
            vecs = [np.asarray(d["embedding"], dtype=np.float32) for d in data]
        assert len(vecs) == len(texts) and vecs[0].shape == (384,)
        return len(vecs)


def concurrent_singles(url: str, texts: list[str], seconds: float, max_requests: int) -> float:
    """Embeddings/s with CLIENTS threads each sending one input per request."""
    budget = max_requests // CLIENTS
    done = [0] * CLIENTS
    barrier = threading.Barrier(CLIENTS + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        session = requests.Session()
        barrier.wait(60)
        i = k
        while done[k] < budget and time.perf_counter() < stop_at[0]:
            r = session.post(f"{url}/v1/embeddings", timeout=60,
                             json={"input": texts[i % len(texts)], "encoding_format": "base64"})
            r.raise_for_status()
            done[k] += 1
            i += CLIENTS

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    barrier.wait(60)
    for t in threads:
        t.join(seconds + 60)
    return sum(done) / (time.perf_counter() - t0)


# -- servers ------------------------------------------------------------------------------------
def start_function(tmp: Path, window_ms: str) -> ServerProcess:
    port = free_port()
    env = {"MODEL_URI": f"file://{MODEL}", "MODEL_CACHE_DIR": str(tmp / "cache"),
           "N_THREADS": str(N_THREADS), "BATCH_WINDOW_MS": window_ms, "LOG_LEVEL": "warning"}
    proc = procs.gunicorn_server("embed", port, env=env,
                                 log_path=tmp / f"embed-window{window_ms}.log").start()
    proc.wait_ready(180)
    return proc


def start_llama_server(tmp: Path) -> ServerProcess:
    """32 slots of 512 tokens, one ubatch of N_BATCH: the same batch shape as the function."""
    server = procs.llama_server(MODEL, free_port(), n_ctx=512 * BATCH, threads=N_THREADS,
                                parallel=BATCH, flash_attn="on", batch=N_BATCH, ubatch=N_BATCH,
                                extra=["--embeddings"], log_path=tmp / "llama-server.log")
    server.start().wait_ready(120)
    return server


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--max-requests", type=int, default=5000, help="per measurement")
    ap.add_argument("--out", default=str(ROOT / ".state" / "bench" / "embed.json"))
    args = ap.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} is missing: run `make models`")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / "embed-run"
    tmp.mkdir(exist_ok=True)
    texts = corpus()
    servers: list = []
    results: dict = {"batch": BATCH, "clients": CLIENTS, "rounds": args.rounds,
                     "seconds": args.seconds, "cpus": os.cpu_count(),
                     "load_avg_start": os.getloadavg()[0],
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    try:
        batched = start_function(tmp, "5")
        servers.append(batched)
        unbatched = start_function(tmp, "0")
        servers.append(unbatched)
        contenders = [InProcess(), HTTP("function over HTTP (gunicorn, base64)", batched.url),
                      HTTP("function over HTTP (gunicorn, float)", batched.url, "float")]
        if LLAMA_SERVER.is_file():
            server = start_llama_server(tmp)
            servers.append(server)
            contenders.append(HTTP("llama-server --embeddings", server.url, "float"))
        else:
            log(f"{LLAMA_SERVER} missing (scripts/build_llama_server.sh): skipped")
            results["llama_server"] = "missing"
        for c in contenders:  # warm up
            c.batch(texts)
        rates: dict[str, list[float]] = {c.name: [] for c in contenders}
        conc: dict[str, list[float]] = {"BATCH_WINDOW_MS=5": [], "BATCH_WINDOW_MS=0": []}
        inproc = contenders[0]
        bound: list[float] = []
        for r in range(args.rounds):
            # What merging can gain at most: CLIENTS single-input calls vs one call of CLIENTS.
            n1, dt1 = run_for(args.seconds / 2, args.max_requests,
                              lambda: inproc.batch(texts[:1]))
            n8, dt8 = run_for(args.seconds / 2, args.max_requests,
                              lambda: inproc.batch(texts[:CLIENTS]))
            bound.append((n8 / dt8) / (n1 / dt1))
            log(f"round {r + 1}: in-process {CLIENTS} inputs per call vs 1: {bound[-1]:.2f} x")
            for c in contenders:
                n, dt = run_for(args.seconds, args.max_requests, lambda c=c: c.batch(texts))
                rates[c.name].append(n / dt)
                log(f"round {r + 1}: {c.name}: {n / dt:.1f} embeddings/s")
            for label, proc in (("BATCH_WINDOW_MS=5", batched), ("BATCH_WINDOW_MS=0", unbatched)):
                rate = concurrent_singles(proc.url, texts, args.seconds, args.max_requests)
                conc[label].append(rate)
                log(f"round {r + 1}: {CLIENTS} clients x 1 input, {label}: {rate:.1f} "
                    "embeddings/s")
    finally:
        for s in servers:
            s.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    cmed = {k: statistics.median(v) for k, v in conc.items()}
    inproc = med[InProcess.name]
    results.update({
        "batch_embeddings_per_s": {k: {"median": m, "rounds": rates[k]} for k, m in med.items()},
        "concurrent_embeddings_per_s": {k: {"median": m, "rounds": conc[k]}
                                        for k, m in cmed.items()},
        "ratio_http_base64_vs_inprocess": med["function over HTTP (gunicorn, base64)"] / inproc,
        "ratio_http_float_vs_inprocess": med["function over HTTP (gunicorn, float)"] / inproc,
        "ratio_dynamic_batching": cmed["BATCH_WINDOW_MS=5"] / cmed["BATCH_WINDOW_MS=0"],
        "ratio_inprocess_8_per_call_vs_1": statistics.median(bound),
        "load_avg_end": os.getloadavg()[0],
    })
    if "llama-server --embeddings" in med:
        results["ratio_http_base64_vs_llama_server"] = (
            med["function over HTTP (gunicorn, base64)"] / med["llama-server --embeddings"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nbatch of {BATCH}, one client (median of {args.rounds} x {args.seconds:.0f} s):")
    for k, m in med.items():
        print(f"  {k:45s} {m:8.1f} embeddings/s  ({m / inproc:.2f} x in-process)")
    print(f"{CLIENTS} concurrent clients, one input per request:")
    for k, m in cmed.items():
        print(f"  {k:45s} {m:8.1f} embeddings/s")
    print(f"dynamic batching: {results['ratio_dynamic_batching']:.2f} x without (in-process bound: "
          f"{results['ratio_inprocess_8_per_call_vs_1']:.2f} x)  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
