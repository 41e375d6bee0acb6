#!/usr/bin/env python3
"""Aggregate throughput as deployed: SmolLM2 and the 0.5B shape, ours vs llama-server, one run.

Issue 24's target: aggregate tokens/s >= 1.0 x llama-server at 4 and 8 streams with 2 threads,
under the thread policy generate ships, for SmolLM2-135M with generate's defaults and for the
qwen2.5-0.5b shape with the sizing guide's settings, side by side in one run. ``--models``
takes NAME or NAME:SLOTS (the same settings, SLOTS changed): by default SmolLM2 at SLOTS 4 (as
deployed) and 8, and the 0.5B example (SLOTS 8) and at SLOTS 4 (what llmfn.sizing derives).

- ours: generate under gunicorn with the deployment's env (deploy/generate.yaml: SMOLLM2's
  SLOTS 4, N_CTX 2048; for the 0.5B the example's SLOTS and N_CTX from sizing.json), flash
  attention at its default (on), the deployed thread policy, only N_THREADS changed
  (``--threads``, default 2);
- llama-server from the same llama.cpp source: ``-np 8 -kvu -t <threads> -fa on``, the same
  file and context (``-c SLOTS*N_CTX --kv-unified-per-slot N_CTX``), batch 512
  (bench_sizes.pair, shared with ``make bench-sizes``).

A round is one burst per server: N greedy SSE streams released together, exactly
``--max-tokens`` tokens each (``ignore_eos``), a prompt no other request shares; servers
alternate which goes first. Reported per model and N: the median of rounds for each server, the
ratio of medians, and the median of the per-round ratios (each round's two bursts ran back to
back, so a slow minute of the shared machine hits both).

    .venv/bin/python bench/bench_aggregate.py [--rounds 6] [--streams 4,8] [--max-tokens 64]
        [--threads 2] [--models smollm2-135m,qwen2.5-0.5b:4] [--no-doc] [--report JSON]

Writes .state/bench/aggregate.json, docs/img/bench-aggregate.png and the "aggregate" section of
docs/benchmarks.md (with --no-doc: the -scratch JSON and .state/bench/ PNG).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench import common, sizes_report
from bench.bench_sizes import LLAMA, OURS, Counter, burst, model_file, pair
from bench.common import log, summary

PLOT = common.REPO_ROOT / "docs" / "img" / "bench-aggregate.png"
PLOT_SCRATCH = common.STATE / "bench" / "aggregate-scratch.png"
SMOLLM2 = "smollm2-135m"


def models(quant: str) -> dict[str, dict]:
    """Each model's file (a callable: the 0.5B's synthetic GGUF is made on first use, only when
    that model runs), sizing row (SLOTS, name) and N_CTX: the deployment's and the 0.5B
    example's."""
    deployed = common.deployed_env()
    table = json.loads(sizes_report.TABLE.read_text())
    half = table["models"]["qwen2.5-0.5b"]
    return {
        SMOLLM2: {"file": common.smollm2_path, "n_ctx": int(deployed["N_CTX"]),
                  "row": {"slots": int(deployed["SLOTS"]), "model_name": deployed["MODEL_NAME"]},
                  "settings": "deploy/generate.yaml"},
        "qwen2.5-0.5b": {"file": lambda: model_file("qwen2.5-0.5b", quant), "n_ctx": table["n_ctx"],
                         "row": half, "settings": "deploy/examples/qwen2.5-0.5b"},
    }


def run_model(name: str, m: dict, args, ctr: Counter) -> dict:
    model = m["file"]()
    servers = pair(m["row"], model, m["n_ctx"], args.threads)
    tps: dict = {OURS: {}, LLAMA: {}}
    try:
        for srv in servers.values():  # one at a time: start-up does not overlap
            srv.start().wait_ready(deadline_s=600)
            burst(srv.port, 1, ctr.take(), 8)  # warm-up
        order = list(servers)
        for n in args.streams:
            for srv_name in servers:
                tps[srv_name][str(n)] = []
            for r in range(args.rounds):
                first = ctr.take(n)
                for srv_name in order if r % 2 == 0 else order[::-1]:
                    tps[srv_name][str(n)].append(burst(servers[srv_name].port, n, first,
                                                       args.max_tokens))
                log(f"{name} {n} streams round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {v[str(n)][-1]:.1f}" for k, v in tps.items()) + " tok/s")
    finally:
        for srv in servers.values():
            srv.stop()
    out: dict = {"settings": m["settings"], "slots": m["row"]["slots"], "n_ctx": m["n_ctx"],
                 "file": model.name, "streams": {}}
    for n in args.streams:
        ours, ref = tps[OURS][str(n)], tps[LLAMA][str(n)]
        out["streams"][str(n)] = {
            OURS: summary(ours), LLAMA: summary(ref),
            "ratio_of_medians": statistics.median(ours) / statistics.median(ref),
            "paired_ratio": summary([a / b for a, b in zip(ours, ref)]),
            "rounds": {OURS: ours, LLAMA: ref}}
    return out


def render(d: dict) -> str:
    lines = [
        "## Aggregate throughput as deployed: SmolLM2 and the 0.5B shape",
        "",
        f"{d['machine']}. {d['threads']} threads, greedy, exactly {d['max_tokens']} tokens per "
        f"stream (`ignore_eos`), SSE, a distinct prompt per stream; {d['rounds']} rounds per "
        "model and N, servers alternating. Ours: the deployment's settings (flash attention on, "
        "OpenMP's default wait, threads following the free CPUs), only N_THREADS changed; "
        "llama-server: `-np 8 -kvu -t N -fa on`, the same file and context. Aggregate: all "
        "completion tokens / (first request sent to last stream done). Paired: the median of "
        "each round's ours / llama-server (the two bursts ran back to back).",
        "",
        "| model (settings) | SLOTS | streams | tok/s ours, median (min-max) | llama-server | "
        "ratio of medians | paired ratio, median (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in d["results"].items():
        for n, s in r["streams"].items():
            lines.append(
                f"| {name} ({r['settings']}) | {r['slots']} | {n} "
                f"| {common.fmt(s[OURS], digits=1)} | {common.fmt(s[LLAMA], digits=1)} "
                f"| {s['ratio_of_medians']:.2f} | {common.fmt(s['paired_ratio'], digits=2)} |")
    lines += ["", "![aggregate tok/s, ours and llama-server](img/bench-aggregate.png)", ""]
    for name, r in d["results"].items():
        for n, s in r["streams"].items():
            ok = "met" if s["ratio_of_medians"] >= 1.0 else "missed"
            lines.append(f"- {name}, {n} streams: {s['ratio_of_medians']:.2f} x (target >= 1.0: "
                         f"{ok})")
    lines += ["", f"Reproduce: `{d['command']}` (`bench/bench_aggregate.py`), "
              f"{d['wall_s'] / 60:.0f} min."]
    return "\n".join(lines)


def plot(d: dict, out: Path) -> None:
    """Grouped bars: tok/s per model and N, both servers, min-max whiskers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(d["results"])
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, r) in zip(axes.flat, d["results"].items()):
        ns = list(r["streams"])
        for k, (srv, color) in enumerate(((OURS, "C0"), (LLAMA, "C1"))):
            med = [r["streams"][n][srv]["median"] for n in ns]
            err = [[m - r["streams"][n][srv]["min"] for n, m in zip(ns, med)],
                   [r["streams"][n][srv]["max"] - m for n, m in zip(ns, med)]]
            ax.bar([i + (k - 0.5) * 0.38 for i in range(len(ns))], med, 0.38, yerr=err,
                   capsize=3, color=color, label=srv)
        for i, n in enumerate(ns):
            ax.annotate(f"{r['streams'][n]['ratio_of_medians']:.2f}x", (i, 0), ha="center",
                        va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=9,
                        color="white")
        ax.set_xticks(range(len(ns)), [f"{n} streams" for n in ns])
        ax.set(title=f"{name}, SLOTS {r['slots']}", ylabel="aggregate tok/s (median of rounds)")
        ax.grid(alpha=0.3, axis="y")
        top = max(r["streams"][n][srv]["max"] for n in ns for srv in (OURS, LLAMA))
        ax.set_ylim(0, top * 1.3)
        ax.legend(loc="upper center", ncol=2)
    fig.suptitle(f"{d['threads']} threads, {d['max_tokens']} tokens per stream, "
                 f"{d['rounds']} rounds", fontsize=10)
    common.save_figure(fig, out, footer=common.figure_footer(d, "make bench-aggregate"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--streams", default="4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=f"{SMOLLM2},{SMOLLM2}:8,qwen2.5-0.5b,qwen2.5-0.5b:4",
                    help="NAME or NAME:SLOTS (SLOTS changed), comma-separated")
    ap.add_argument("--quant", default="q4_k_m", choices=("q4_k_m", "q8_0"))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--report", type=Path, help="no run: the report and plot of this JSON "
                    "(.state/bench/aggregate.json or -scratch.json)")
    args = ap.parse_args(argv)
    if args.report:
        data = json.loads(args.report.read_text())
        plot(data, PLOT_SCRATCH if args.no_doc else PLOT)
        common.publish("aggregate", data, render, no_doc=args.no_doc)
        return 0
    args.streams = [int(x) for x in args.streams.split(",")]
    if not (1 <= args.rounds <= 20 and 8 <= args.max_tokens <= 512 and 1 <= args.threads <= 64
            and all(1 <= n <= 8 for n in args.streams)):
        ap.error("--rounds 1..20, --max-tokens 8..512, --threads 1..64, streams 1..8")
    known = models(args.quant)
    chosen = [s.strip() for s in args.models.split(",")]
    for c in chosen:  # NAME or NAME:SLOTS (the same settings, SLOTS changed)
        base, _, slots = c.partition(":")
        if base not in known or (slots and not slots.isdigit()):
            ap.error(f"--models: NAME[:SLOTS], NAME one of {', '.join(known)}")
        if slots:
            m = known[base]
            known[c] = {**m, "row": {**m["row"], "slots": int(slots)},
                        "settings": f"{m['settings']}, SLOTS={slots}"}
    data: dict = {**common.run_stamp(), "threads": args.threads, "rounds": args.rounds,
                  "max_tokens": args.max_tokens, "streams": args.streams, "quant": args.quant,
                  "command": "make bench-aggregate" + (
                      f' BENCH_ARGS="{" ".join(argv or sys.argv[1:])}"'
                      if (argv or sys.argv[1:]) else ""),
                  "results": {}}
    ctr = Counter()
    t0 = time.perf_counter()
    for name in chosen:
        data["results"][name] = run_model(name, known[name], args, ctr)
    data["wall_s"] = time.perf_counter() - t0
    plot(data, PLOT_SCRATCH if args.no_doc else PLOT)
    common.publish("aggregate", data, render, no_doc=args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
