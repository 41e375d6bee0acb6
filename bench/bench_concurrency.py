#!/usr/bin/env python3
"""Concurrent SSE streams: our generate function (gunicorn) vs llama-server with N slots.

For each N in ``--streams`` (default 1, 2, 4, 8) both servers are started fresh with N slots
and the same per-slot context, threads, batch and flash-attention setting, on the same GGUF
(SmolLM2-135M-Instruct Q4_1):

- ours: SLOTS=N, N_CTX=``--ctx-per-slot``, QUEUE_SIZE=N, GUNICORN_THREADS=N+4,
  FLASH_ATTN=``--flash-attn``, N_THREADS=``--threads``, OMP_WAIT_POLICY=``--omp-wait-policy``;
- llama-server: -np N -kvu (one unified KV buffer) -c N*ctx --kv-unified-per-slot ctx,
  -fa ``--flash-attn``, -t/-tb ``--threads``, its default prompt cache.

A round is one burst per server: N greedy /v1/completions SSE streams released together
(a barrier), each asking ``--max-tokens`` tokens with a prompt whose leading number no other
request of the run has (no prefix reuse); the completion tokens of every stream are checked
from ``usage`` and the run fails if one differs. ``--rounds`` rounds per N, alternating which
server goes first. Reported per N and server: aggregate tok/s (all completion tokens / wall time
from the first request sent to the last stream done; median over rounds), time to first text
chunk p50 / p95 and the gap between consecutive text chunks p95 (nearest rank, over all streams
of all rounds), and ours / llama-server. Targets: aggregate >= 1.0 x and TTFT p50 <= 1.2 x at
4 and 8 streams, single-stream aggregate >= 0.97 x.

    .venv/bin/python bench/bench_concurrency.py [--streams 1,2,4,8] [--rounds 3]
        [--max-tokens 128] [--flash-attn off] [--no-doc]

Writes .state/bench/concurrency.json, docs/img/bench-concurrency.png and the "concurrency"
section of docs/benchmarks.md (with --no-doc: the -scratch JSON and .state/bench/ PNG).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import common
from bench.common import log, percentile, summary

OURS, LLAMA = "ours", "llama-server"
PLOT = common.REPO_ROOT / "docs" / "img" / "bench-concurrency.png"
PLOT_SCRATCH = common.STATE / "bench" / "concurrency-scratch.png"


def burst(port: int, n: int, first_prompt: int, max_tokens: int) -> dict:
    """``n`` SSE streams sent together; wall time, tokens, TTFTs and inter-chunk gaps."""
    gate = threading.Barrier(n)

    def one(k: int) -> tuple[float, common.Timing]:
        gate.wait(timeout=60)
        sent = time.perf_counter()
        return sent, common.post_completion(port, common.completion_body(
            first_prompt + k, stream=True, max_tokens=max_tokens), timeout_s=600)

    with ThreadPoolExecutor(n) as pool:
        done = [f.result(timeout=900) for f in [pool.submit(one, k) for k in range(n)]]
    tokens = [t.completion_tokens for _, t in done]
    if tokens != [max_tokens] * n:
        raise SystemExit(f"port {port}: completion tokens {tokens}, not {max_tokens} each "
                         f"(prompts {first_prompt + 1}.. ): pick a prompt that does not stop early")
    wall = max(s + t.total_s for s, t in done) - min(s for s, _ in done)
    return {"wall_s": wall, "tokens": sum(tokens), "ttft_s": [t.ttft_s for _, t in done],
            "gaps_s": [b - a for _, t in done for a, b in zip(t.chunk_s, t.chunk_s[1:])]}


def servers_for(n: int, model: Path, args) -> dict[str, common.Server]:
    env = {**common.generate_env(common.file_model_env(model), n_ctx=args.ctx_per_slot,
                                 threads=args.threads),
           "SLOTS": str(n), "QUEUE_SIZE": str(n), "GUNICORN_THREADS": str(n + 4),
           "FLASH_ATTN": args.flash_attn,
           **({} if args.omp_wait_policy == "unset" else {"OMP_WAIT_POLICY": args.omp_wait_policy})}
    return {OURS: common.gunicorn_server(common.free_port(), env),
            LLAMA: common.llama_server(
                common.free_port(), model, n_ctx=n * args.ctx_per_slot, threads=args.threads,
                parallel=n, flash_attn=args.flash_attn,
                extra=["-kvu", "--kv-unified-per-slot", str(args.ctx_per_slot)])}


def run_n(n: int, model: Path, args, first_prompt: int) -> dict:
    """Both servers with ``n`` slots, ``args.rounds`` bursts each; per-server figures."""
    servers = servers_for(n, model, args)
    rounds = {name: [] for name in servers}
    try:
        for name, srv in servers.items():  # one at a time: start-up does not overlap
            log(f"N={n} {name}: ready in {srv.start().wait_ready():.2f} s")
            common.post_completion(srv.port, common.completion_body(0, stream=True, max_tokens=8))
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for name in order:
                rounds[name].append(burst(servers[name].port, n, first_prompt, args.max_tokens))
            first_prompt += n
            log(f"N={n} round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1]['tokens'] / v[-1]['wall_s']:.1f} tok/s" for k, v in rounds.items()))
    finally:
        for srv in servers.values():
            srv.stop()
    out = {}
    for name, bursts in rounds.items():
        ttft = [x for b in bursts for x in b["ttft_s"]]
        gaps = [x for b in bursts for x in b["gaps_s"]]
        out[name] = {"aggregate_tps": summary([b["tokens"] / b["wall_s"] for b in bursts]),
                     "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
                     "gap_p95_s": percentile(gaps, 0.95), "rounds": bursts}
    return out


def ratios(res: dict) -> dict:
    o, t = res[OURS], res[LLAMA]
    return {"aggregate_tps": o["aggregate_tps"]["median"] / t["aggregate_tps"]["median"],
            **{k: o[k] / t[k] for k in ("ttft_p50_s", "ttft_p95_s", "gap_p95_s")}}


def plot(d: dict, out: Path) -> None:
    """Aggregate tok/s and TTFT p50 against streams, both servers (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in d["results"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, marker in ((OURS, "o"), (LLAMA, "s")):
        res = [d["results"][str(n)][name] for n in ns]
        ax1.plot(ns, [r["aggregate_tps"]["median"] for r in res], marker=marker, label=name)
        ax2.plot(ns, [r["ttft_p50_s"] * 1000 for r in res], marker=marker, label=name)
    for ax, title in ((ax1, "aggregate tok/s (median of rounds)"),
                      (ax2, "time to first token p50 (ms)")):
        ax.set(xlabel="concurrent streams", title=title, xscale="log", ylim=(0, None))
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{d['model']}, {d['max_tokens']} tokens per stream, {d['threads']} threads, "
                 f"flash attention {d['flash_attn']}", fontsize=10)
    common.save_figure(fig, out, footer=common.figure_footer(d, "make bench-concurrency"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts N")
    ap.add_argument("--rounds", type=int, default=3, help="bursts per server and N")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--flash-attn", default="off", choices=("on", "off"))
    ap.add_argument("--omp-wait-policy", default="unset", choices=("unset", "passive", "active"),
                    help="OMP_WAIT_POLICY of ours; unset as deployed (generate's threads follow "
                    "the free CPUs, ADAPTIVE_THREADS)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    streams = [int(x) for x in args.streams.split(",")]
    if not 1 <= args.rounds <= 20 or not all(1 <= n <= 32 for n in streams):
        ap.error("--rounds must be 1..20 and every stream count 1..32")

    model = common.smollm2_path()
    results, first_prompt = {}, 100
    for n in streams:
        t0 = time.perf_counter()
        results[str(n)] = run_n(n, model, args, first_prompt)
        results[str(n)]["ratio"] = ratios(results[str(n)])
        first_prompt += n * args.rounds
        log(f"N={n} done in {time.perf_counter() - t0:.0f} s")
    data = {**common.run_stamp(), "model": model.name, "streams": streams,
            "rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads,
            "ctx_per_slot": args.ctx_per_slot, "flash_attn": args.flash_attn,
            "omp_wait_policy": args.omp_wait_policy, "results": results}
    plot(data, PLOT_SCRATCH if args.no_doc else PLOT)
    common.publish("concurrency", data, render, no_doc=args.no_doc)
    return 0


def render(d: dict) -> str:
    lines = ["| streams | aggregate tok/s, ours | llama-server | ratio | TTFT p50 / p95 (ms), "
             "ours | llama-server | ratio p50 / p95 | chunk gap p95 (ms), ours | llama-server "
             "| ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in d["results"].items():
        o, t, q = r[OURS], r[LLAMA], r["ratio"]
        lines.append(
            f"| {n} | {common.fmt(o['aggregate_tps'], digits=1)} | "
            f"{common.fmt(t['aggregate_tps'], digits=1)} | {q['aggregate_tps']:.2f} | "
            f"{o['ttft_p50_s'] * 1e3:.0f} / {o['ttft_p95_s'] * 1e3:.0f} | "
            f"{t['ttft_p50_s'] * 1e3:.0f} / {t['ttft_p95_s'] * 1e3:.0f} | "
            f"{q['ttft_p50_s']:.2f} / {q['ttft_p95_s']:.2f} | {o['gap_p95_s'] * 1e3:.1f} | "
            f"{t['gap_p95_s'] * 1e3:.1f} | {q['gap_p95_s']:.2f} |")
    checks = []
    for n, key, label, op, bound in (
            ("1", "aggregate_tps", "tok/s", ">=", 0.97), ("4", "aggregate_tps", "tok/s", ">=", 1.0),
            ("8", "aggregate_tps", "tok/s", ">=", 1.0), ("4", "ttft_p50_s", "TTFT p50", "<=", 1.2),
            ("8", "ttft_p50_s", "TTFT p50", "<=", 1.2)):
        if n in d["results"]:
            v = d["results"][n]["ratio"][key]
            ok = v >= bound if op == ">=" else v <= bound
            checks.append(f"{n} stream{'s' if n != '1' else ''}: {label} {v:.2f} x "
                          f"(target {op} {bound}: {'met' if ok else 'NOT met'})")
    return "\n".join([
        "## Concurrent streams: our function vs llama-server with N slots",
        "",
        f"Machine: {d['machine']}, shared with other jobs. Model {d['model']}, "
        f"{d['threads']} threads, context {d['ctx_per_slot']} per slot, batch 512, flash "
        f"attention {d['flash_attn']}, greedy, exactly {d['max_tokens']} completion tokens per "
        "stream (checked from `usage`), /v1/completions SSE, a distinct prompt per stream. Ours: "
        f"SLOTS=N, QUEUE_SIZE=N, GUNICORN_THREADS=N+4, OMP_WAIT_POLICY={d['omp_wait_policy']}; "
        "llama-server: `-np N -kvu -c N*ctx --kv-unified-per-slot ctx`. "
        f"{d['rounds']} rounds per N, servers alternating. Aggregate tok/s: all completion "
        "tokens / (first request sent to last stream done), median (min-max) of rounds; TTFT "
        "and the gap between text chunks: nearest-rank percentiles over every stream of every "
        "round. Ratios: ours / llama-server.",
        "",
        *lines,
        "",
        "![aggregate tok/s and TTFT p50 against concurrent streams](img/bench-concurrency.png)",
        "",
        *[f"- {c}" for c in checks],
        "",
        "Reproduce: `make bench-concurrency` (`bench/bench_concurrency.py`).",
    ])


if __name__ == "__main__":
    sys.exit(main())
