#!/usr/bin/env python3
"""Our generate function (gunicorn, as `make run` starts it) side by side with llama-server.

Same GGUF (SmolLM2-135M-Instruct Q4_1), same n_ctx, threads, batch, attention (no flash
attention, as llama-cpp-python's default), greedy sampling (temperature 0), same prompt and
max_tokens, on /v1/completions, JSON and SSE. Both servers run at once; requests alternate
ours / theirs so a drift of the shared machine hits both. Each run's prompt starts with a
different number so neither server reuses a cached prompt prefix.

Measured from the client: time to first token and last token (SSE), total latency, decode
tokens/s = (completion_tokens - 1) / (last token - first token), tokens from each server's
``usage``. Memory: VmRSS / VmHWM of the model process from /proc.

    .venv/bin/python bench/bench_generate.py [--runs 7] [--max-tokens 128] [--func-python]

Writes .state/bench/generate.json and the "Generation" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import common
from bench.common import completion_body as body
from bench.common import fmt, log, ratio, summary


def measure(servers: dict[str, common.Server], runs: int, max_tokens: int) -> dict:
    """Alternate the servers request by request; timings per server and mode."""
    out = {name: {"json": [], "sse": []} for name in servers}
    for i in range(runs):
        for mode in ("json", "sse"):
            for name, srv in servers.items():
                # offset the prompt number per mode, so SSE never reuses the JSON run's prompt
                t = common.post_completion(srv.port, body(i * 2 + (mode == "sse") + 100,
                                                          stream=mode == "sse",
                                                          max_tokens=max_tokens))
                out[name][mode].append(t)
        log(f"run {i + 1}/{runs}: " + ", ".join(
            f"{n} {out[n]['sse'][-1].decode_tps or 0:.0f} tok/s" for n in servers))
    return out


def summarize(timings: dict) -> dict:
    res = {}
    for name, modes in timings.items():
        js, sse = modes["json"], modes["sse"]
        res[name] = {
            "json_total_s": summary([t.total_s for t in js]),
            "json_tps": summary([t.completion_tokens / t.total_s for t in js]),
            "sse_ttft_s": summary([t.ttft_s for t in sse]),
            "sse_total_s": summary([t.total_s for t in sse]),
            "sse_decode_tps": summary([t.decode_tps for t in sse]),
            "completion_tokens": sorted({t.completion_tokens for t in js + sse}),
            "prompt_tokens": sorted({t.prompt_tokens for t in js + sse}),
        }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="measured requests per server and mode")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--func-python", action="store_true",
                    help="also run our function under func_python.http.serve (hypercorn)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 50:
        ap.error("--runs must be 1..50")

    model = common.smollm2_path()
    env = common.generate_env(common.file_model_env(model), n_ctx=args.n_ctx,
                              threads=args.threads)
    servers = {"ours (gunicorn)": common.gunicorn_server(common.free_port(), env),
               "llama-server": common.llama_server(common.free_port(), model,
                                                   n_ctx=args.n_ctx, threads=args.threads)}
    if args.func_python:
        servers["ours (func-python)"] = common.func_python_server(common.free_port(), env)
    memory = {}
    try:
        for name, srv in servers.items():  # one at a time: start-up does not overlap
            log(f"{name}: ready in {srv.start().wait_ready():.2f} s (port {srv.port})")
            memory[name] = {"after_load": srv.memory_kb()}
        for srv in servers.values():  # warm-up: first request of each process
            common.post_completion(srv.port, body(0, stream=True, max_tokens=8))
            common.post_completion(srv.port, body(0, stream=False, max_tokens=8))
        t0 = time.perf_counter()
        timings = measure(servers, args.runs, args.max_tokens)
        log(f"measured in {time.perf_counter() - t0:.1f} s")
        for name, srv in servers.items():
            memory[name]["after_runs"] = srv.memory_kb()
    finally:
        for srv in servers.values():
            srv.stop()

    res = summarize(timings)
    texts = {name: timings[name]["json"][0].text for name in servers}
    data = {**common.run_stamp(), "model": model.name, "runs": args.runs,
            "max_tokens": args.max_tokens, "threads": args.threads, "n_ctx": args.n_ctx,
            "results": res, "memory_kb": memory,
            "same_text_first_run": len(set(texts.values())) == 1}
    common.publish("generate", data, render, no_doc=args.no_doc)
    return 0


def render(d: dict) -> str:
    res, mem = d["results"], d["memory_kb"]
    names = list(res)
    ref = "llama-server"
    rows = [("decode tok/s, SSE", "sse_decode_tps", " ", 1),
            ("time to first token, SSE (s)", "sse_ttft_s", "", 4),
            ("total latency, SSE (s)", "sse_total_s", "", 3),
            ("total latency, JSON (s)", "json_total_s", "", 3),
            ("end-to-end tok/s, JSON", "json_tps", "", 1)]
    head = "| figure | " + " | ".join(names) + " | " + " | ".join(
        f"{n} / {ref}" for n in names if n != ref) + " |"
    lines = [head, "|" + "---|" * (1 + len(names) + len(names) - 1)]
    for label, key, _, digits in rows:
        cells = [fmt(res[n][key], digits=digits) for n in names]
        ratios = [ratio(res[n][key], res[ref][key]) for n in names if n != ref]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(
            f"{r:.2f}" if r is not None else "n/a" for r in ratios) + " |")
    for label, phase, key in (("RSS after load (MiB)", "after_load", "rss_kb"),
                              ("RSS after the runs (MiB)", "after_runs", "rss_kb"),
                              ("peak RSS, VmHWM (MiB)", "after_runs", "hwm_kb"),
                              ("RSS of all processes (MiB)", "after_runs", "tree_rss_kb")):
        vals = {n: (mem[n][phase][key] or 0) / 1024 for n in names}
        lines.append(f"| {label} | " + " | ".join(f"{vals[n]:.0f}" for n in names) + " | "
                     + " | ".join(f"{vals[n] / vals[ref]:.2f}" if vals[ref] else "n/a"
                                  for n in names if n != ref) + " |")
    toks = ", ".join(f"{n}: {res[n]['completion_tokens']}" for n in names)
    ptoks = ", ".join(f"{n}: {res[n]['prompt_tokens']}" for n in names)
    return "\n".join([
        "## Generation: our function vs llama-server",
        "",
        f"Machine: {d['machine']}, shared with other jobs. Model {d['model']}, n_ctx "
        f"{d['n_ctx']}, {d['threads']} threads, batch 512, no flash attention, temperature 0, "
        f"max_tokens {d['max_tokens']}, /v1/completions. {d['runs']} measured requests per "
        "server and mode after one warm-up, alternating servers; median (min-max). Ratios are "
        "of medians, ours / llama-server.",
        "",
        *lines,
        "",
        f"Completion tokens per request (usage): {toks}. Prompt tokens: {ptoks}. "
        f"Same text from every server on the first run: {d['same_text_first_run']}.",
        "Memory: the process holding the model (gunicorn's worker; llama-server itself); "
        "\"all processes\" adds gunicorn's master.",
        "",
        "Reproduce: `make bench-generate` (`bench/bench_generate.py`).",
    ])


if __name__ == "__main__":
    sys.exit(main())
