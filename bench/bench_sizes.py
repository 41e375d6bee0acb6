#!/usr/bin/env python3
"""Real model sizes (0.5B to 8B shapes): our generate function vs llama-server, one run per size.

For each size of deploy/examples/sizing.json (``--sizes``), on the synthetic GGUF of its shape
(scripts/make_synthetic_gguf.py ``--shape``, ``--quant``, made here under .state/models on first
use; random weights cost the compute of real ones):

- ours: generate under gunicorn with the deployment's settings (deploy/generate.yaml's env with
  the example's N_CTX, SLOTS, QUEUE_SIZE; flash attention at its default, on; the deployed
  thread policy), changing only N_THREADS;
- llama-server from the same llama.cpp source: ``-np 8 -kvu -t <threads>``, the same file and
  the same context (``-c SLOTS*N_CTX --kv-unified-per-slot N_CTX``: the KV memory ours holds),
  ``-fa on``, batch 512.

Measured, servers alternated per round: single-stream decode tokens/s at 1 and 2 threads (up to
nproc; ``ignore_eos``, exactly ``--max-tokens`` tokens); at the example's threads (capped at
nproc): aggregate tokens/s at 1/4/8 streams, TTFT of a ~1,000-token prompt, RSS after load and
after the runs, KV bytes per token (the shape's formula, checked against llama-server's
``llama_kv_cache`` log line), load time (start to ready); ours' cold start from MinIO, empty
cache through the capped proxy (scripts/tcp_throttle.py, as bench_coldstart) and warm cache,
start to first token. For llama-3.1-8b only decode at 1 and 2 threads, RSS and load time: the
rest is extrapolated (bench/sizes_report.py, labelled so; the method is checked by predicting
qwen2.5-3b from the smaller sizes).

    .venv/bin/python bench/bench_sizes.py [--sizes qwen2.5-0.5b,...] [--quant q4_k_m] [--quick]
        [--no-doc]

Writes .state/bench/sizes.json, docs/img/bench-sizes.png, the "sizes" section of
docs/benchmarks.md and the measured columns of deploy/examples/sizing.json and docs/deploy.md's
"Sizing" table (scripts/sizing_table.py). With --no-doc: the -scratch JSON and PNG only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import common, sizes_report
from bench.common import log, summary

OURS, LLAMA = "ours", "llama-server"
MODELS = common.STATE / "models"
BUCKET = "bench-sizes"
PARTIAL = "llama-3.1-8b"  # decode at 1 and 2 threads, RSS and load time only
_KV_LOG = re.compile(r"llama_kv_cache: +size = +([0-9.]+) MiB \( *(\d+) cells")


def model_file(shape: str, quant: str) -> Path:
    """The synthetic GGUF of ``shape`` (made on first use; seconds of CPU, its size on disk)."""
    out = MODELS / f"synthetic-{shape}-{quant}.gguf"
    if not out.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run([str(common.VENV_PY), "-m", "scripts.make_synthetic_gguf", "--shape",
                        shape, "--quant", quant, "--out", str(out)], check=True,
                       cwd=common.REPO_ROOT, timeout=1800)
        log(f"{out.name}: written in {time.perf_counter() - t0:.0f} s")
    return out


def body(i: int, *, max_tokens: int, prompt: str = common.STORY_PROMPT) -> dict:
    """A greedy SSE completion of exactly ``max_tokens`` tokens (``ignore_eos``: random weights
    may pick the end token), its prompt led by ``i`` so that no two share a cached prefix."""
    return {"prompt": f"{i}. {prompt}", "max_tokens": max_tokens, "temperature": 0,
            "seed": 42, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def burst(port: int, n: int, first: int, max_tokens: int) -> float:
    """``n`` streams released together: all completion tokens / wall time (tok/s)."""
    gate = threading.Barrier(n)

    def one(k: int) -> tuple[float, common.Timing]:
        gate.wait(timeout=60)
        sent = time.perf_counter()
        return sent, common.post_completion(port, body(first + k, max_tokens=max_tokens),
                                            timeout_s=1800)

    with ThreadPoolExecutor(n) as pool:
        done = [f.result(timeout=3600) for f in [pool.submit(one, k) for k in range(n)]]
    tokens = [t.completion_tokens for _, t in done]
    if tokens != [max_tokens] * n:
        raise SystemExit(f"port {port}: completion tokens {tokens}, not {max_tokens} each")
    return sum(tokens) / (max(s + t.total_s for s, t in done) - min(s for s, _ in done))


class Counter:
    """Prompt numbers never used twice in a run (no prefix-cache reuse between requests)."""

    def __init__(self) -> None:
        self.n = 1000

    def take(self, k: int = 1) -> int:
        self.n += k
        return self.n - k


def long_prompt(port: int, target: int) -> tuple[str, int]:
    """A text of about ``target`` prompt tokens for this model's tokenizer (counted by the
    server's ``usage``), and its count."""
    def count(text: str) -> int:
        b = {**body(1, max_tokens=1, prompt=text), "stream": False}
        b.pop("stream_options")
        return common.post_completion(port, b).prompt_tokens

    unit = common.STORY_PROMPT
    reps = max(1, round(target / max(count(unit), 1)))
    n = count(text := " ".join([unit] * reps))  # the prefix joins: correct once
    reps = max(1, round(reps * target / max(n, 1)))
    return (text := " ".join([unit] * reps)), count(text)


# -- servers --------------------------------------------------------------------------------------
def ours_env(row: dict, n_ctx: int, threads: int, model_env: dict) -> dict:
    """The deployment's env (deploy/generate.yaml) sized as the example, N_THREADS changed."""
    env = {**common.deployed_env(), **common.generate_env(model_env, n_ctx=n_ctx,
                                                          threads=threads)}
    env.pop("FLASH_ATTN")  # the deployed default (on), not generate_env's "off"
    env.update(SLOTS=str(row["slots"]), MODEL_NAME=row["model_name"], SHUTDOWN_GRACE_S="1")
    if not model_env.get("S3_ENDPOINT_URL"):
        env.pop("S3_ENDPOINT_URL", None)
    return env


def pair(row: dict, model: Path, n_ctx: int, threads: int) -> dict[str, common.Server]:
    env = ours_env(row, n_ctx, threads, common.file_model_env(model))
    total = row["slots"] * n_ctx
    return {OURS: common.gunicorn_server(common.free_port(), env),
            LLAMA: common.llama_server(common.free_port(), model, n_ctx=total, threads=threads,
                                       parallel=8, flash_attn="on",
                                       extra=["-kvu", "--kv-unified-per-slot", str(n_ctx)])}


def kv_from_log(model: Path, n_ctx: int) -> int | None:
    """KV bytes per token from llama-server's ``llama_kv_cache: size = X MiB (N cells`` line,
    which it logs at verbosity 4 only: a server of its own, started and stopped (not timed)."""
    srv = common.llama_server(common.free_port(), model, n_ctx=n_ctx, threads=1,
                              extra=["-lv", "4"])
    try:
        srv.start().wait_ready(deadline_s=1800)
        m = _KV_LOG.search(srv.log_tail(2_000_000))
    finally:
        srv.stop()
    return round(float(m.group(1)) * 1024 * 1024 / int(m.group(2))) if m else None


def run_threads(row: dict, model: Path, threads: int, args, ctr: Counter, full: bool) -> dict:
    """Both servers at ``threads``: load, RSS, decode; with ``full`` also aggregate and TTFT."""
    servers = pair(row, model, args.n_ctx, threads)
    out: dict = {name: {"decode_tps": [], "aggregate_tps": {}, "ttft_s": []}
                 for name in servers}
    try:
        for name, srv in servers.items():  # one at a time: start-up does not overlap
            out[name]["load_s"] = srv.start().wait_ready(deadline_s=1800)
            out[name]["mem_after_load"] = srv.memory_kb()
            common.post_completion(srv.port, body(ctr.take(), max_tokens=4))  # warm-up
            log(f"  {threads} thr {name}: ready in {out[name]['load_s']:.1f} s, RSS "
                f"{(out[name]['mem_after_load']['rss_kb'] or 0) / 1024:.0f} MiB")
        order = list(servers)
        for r in range(args.rounds):
            i = ctr.take()
            for name in order if r % 2 == 0 else order[::-1]:
                t = common.post_completion(servers[name].port, body(i, max_tokens=args.max_tokens))
                out[name]["decode_tps"].append(t.decode_tps)
                out["short_prompt_tokens"] = t.prompt_tokens
        log(f"  {threads} thr decode: " + ", ".join(
            f"{k} {summary(out[k]['decode_tps'])['median']:.2f} tok/s" for k in servers))
        if full:
            text, n = long_prompt(servers[OURS].port, args.prompt_tokens)
            out["prompt_tokens"] = n
            for r in range(args.rounds):
                i = ctr.take()
                for name in order if r % 2 == 0 else order[::-1]:
                    t = common.post_completion(servers[name].port,
                                               body(i, max_tokens=2, prompt=text))
                    out[name]["ttft_s"].append(t.ttft_s)
            log(f"  TTFT {n} tokens: " + ", ".join(
                f"{k} {summary(out[k]['ttft_s'])['median']:.2f} s" for k in servers))
            for n_streams in args.streams:
                for name in servers:
                    out[name]["aggregate_tps"][str(n_streams)] = []
                for r in range(args.rounds):
                    first = ctr.take(n_streams)
                    for name in order if r % 2 == 0 else order[::-1]:
                        out[name]["aggregate_tps"][str(n_streams)].append(
                            burst(servers[name].port, n_streams, first, args.max_tokens))
                log(f"  {n_streams} streams: " + ", ".join(
                    f"{k} {summary(out[k]['aggregate_tps'][str(n_streams)])['median']:.2f} tok/s"
                    for k in servers))
        for name, srv in servers.items():
            out[name]["mem_after_runs"] = srv.memory_kb()
    finally:
        for srv in servers.values():
            srv.stop()
    return out


def cold_starts(name: str, row: dict, model: Path, args, minio, proxy_url: str) -> dict:
    """Ours from MinIO: empty cache through the capped proxy, then warm; start to first token."""
    from bench.bench_coldstart import run_server, sha256
    from scripts import upload_model

    key = model.name
    upload_model.upload(minio.client(), str(model), BUCKET, key)
    cache = common.STATE / "bench" / "sizes-cache"
    s3 = {"MODEL_URI": f"s3://{BUCKET}/{key}", "MODEL_SHA256": sha256(model),
          "MODEL_CACHE_DIR": str(cache), **minio.client_env()}
    threads = min(row["threads"], os.cpu_count() or 1)
    res: dict = {"empty": [], "warm": []}
    for _ in range(args.cold_runs):
        shutil.rmtree(cache, ignore_errors=True)
        env = ours_env(row, args.n_ctx, threads, {**s3, "S3_ENDPOINT_URL": proxy_url})
        res["empty"].append(run_server(common.gunicorn_server(common.free_port(), env), True))
        env = ours_env(row, args.n_ctx, threads, s3)
        res["warm"].append(run_server(common.gunicorn_server(common.free_port(), env), True))
        log(f"  cold start {name}: empty {res['empty'][-1]['first_token']:.1f} s, warm "
            f"{res['warm'][-1]['first_token']:.1f} s to first token")
    shutil.rmtree(cache, ignore_errors=True)
    minio.client().delete_object(Bucket=BUCKET, Key=key)
    return res


def run_size(name: str, row: dict, args, minio, proxy_url: str | None, ctr: Counter) -> dict:
    t0 = time.perf_counter()
    model = model_file(name, args.quant)
    made_s = time.perf_counter() - t0
    nproc = os.cpu_count() or 1
    full = name != PARTIAL
    main_threads = min(row["threads"], nproc)
    res: dict = {"file_bytes": model.stat().st_size, "file": model.name, "full": full,
                 "threads_main": main_threads, "file_made_s": made_s,
                 "kv_bytes_per_token": sizes_report.kv_per_token(name, model.stat().st_size),
                 "load_start": os.getloadavg(), "threads": {},
                 "kv_bytes_per_token_log": kv_from_log(model, args.n_ctx)}
    for t in sorted({1, min(2, nproc)}):
        res["threads"][str(t)] = run_threads(row, model, t, args, ctr, full and t == main_threads)
    if full and main_threads not in (1, 2):
        res["threads"][str(main_threads)] = run_threads(row, model, main_threads, args, ctr, True)
    if full and proxy_url is not None:
        res["cold"] = cold_starts(name, row, model, args, minio, proxy_url)
    res["load_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t0
    log(f"{name}: done in {res['wall_s']:.0f} s")
    return res


def main(argv: list[str] | None = None) -> int:
    table = json.loads(sizes_report.TABLE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(table["models"]),
                    help="comma list of sizing.json's models (default all four)")
    ap.add_argument("--quant", default=table["quant"], choices=("q4_k_m", "q8_0"))
    ap.add_argument("--quick", action="store_true",
                    help="reduced run: 2 rounds, 32 tokens, one cold start of each kind")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds per measurement")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion tokens per stream")
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--cold-runs", type=int, default=2)
    ap.add_argument("--rate-mb-s", type=float, default=40.0,
                    help="capped proxy: bandwidth per connection, MB/s (as bench-coldstart)")
    ap.add_argument("--latency-ms", type=float, default=2.0)
    ap.add_argument("--skip-cold", action="store_true", help="no MinIO cold starts")
    ap.add_argument("--no-doc", action="store_true",
                    help="write only the -scratch JSON and PNG (no docs, no sizing.json)")
    ap.add_argument("--report", type=Path, help="no run: the report of this raw JSON "
                    "(.state/bench/sizes-raw.json, written before every report)")
    args = ap.parse_args(argv)
    if args.report:
        sizes_report.finish(json.loads(args.report.read_text()), table, no_doc=args.no_doc)
        return 0
    if args.quick:
        args.rounds, args.max_tokens, args.cold_runs = 2, 32, 1
    args.streams = [int(x) for x in args.streams.split(",")]
    sizes = [s.strip() for s in args.sizes.split(",")]
    if not set(sizes) <= set(table["models"]):
        ap.error(f"--sizes: choose from {', '.join(table['models'])}")
    if not (1 <= args.rounds <= 10 and 8 <= args.max_tokens <= 512 and 1 <= args.cold_runs <= 5
            and all(1 <= n <= 8 for n in args.streams)):
        ap.error("--rounds 1..10, --max-tokens 8..512, --cold-runs 1..5, streams 1..8")
    args.n_ctx = table["n_ctx"]
    data: dict = {**common.run_stamp(), "quant": args.quant, "n_ctx": args.n_ctx,
                  "rounds": args.rounds, "max_tokens": args.max_tokens,
                  "streams": args.streams, "prompt_tokens": args.prompt_tokens,
                  "cold_runs": args.cold_runs, "rate_mb_s": args.rate_mb_s,
                  "latency_ms": args.latency_ms, "quick": args.quick,
                  "thread_policy": "OpenMP's default wait, threads following the free CPUs",
                  "command": "make bench-sizes" + (f' BENCH_ARGS="{" ".join(argv or sys.argv[1:])}"'
                                                   if (argv or sys.argv[1:]) else ""),
                  "results": {}}
    ctr = Counter()
    t0 = time.perf_counter()
    if args.skip_cold:
        for name in sizes:
            data["results"][name] = run_size(name, table["models"][name], args, None, None, ctr)
    else:
        from scripts import services
        from scripts.tcp_throttle import Throttle
        services.ensure_binaries()
        minio = services.MinioServer(common.STATE / "bench" / "sizes-minio", common.HOST,
                                     common.free_port(),
                                     log_path=common.LOG_DIR / "sizes-minio.log")
        with minio:
            with Throttle(("127.0.0.1", minio.port), rate_bps=args.rate_mb_s * 1e6,
                          latency_s=args.latency_ms / 1e3) as proxy:
                for name in sizes:
                    data["results"][name] = run_size(name, table["models"][name], args, minio,
                                                     proxy.url, ctr)
    data["wall_s"] = time.perf_counter() - t0
    log(f"wrote {common.write_json('sizes-raw', data)}")  # before the report, which may fail
    sizes_report.finish(data, table, no_doc=args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
