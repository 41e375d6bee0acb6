#!/usr/bin/env python3
"""Each sizing example under its own memory limit: does generate fit what the overlay gives it?

For each size of deploy/examples/sizing.json (``--sizes``), on the synthetic GGUF of its shape
(as ``make bench-sizes``), generate runs under gunicorn with the example's settings (SLOTS,
N_CTX, flash attention on, the deployed thread policy; N_THREADS the example's capped at nproc)
in a cgroup of its own whose memory limit is the example's (v2 ``memory.max`` or v1
``memory.limit_in_bytes``: page cache included, as a container's). The model file's cached
pages are dropped first (``posix_fadvise DONTNEED``) so that the group is charged for every
page it reads, as a pod reading its emptyDir would be.

Load: one request whose prompt is longer than N_UBATCH (``--prompt-tokens``, the largest
compute buffer), then SLOTS streams at once (every slot's KV in use). Reported per size: what
generate derived (its readiness text), the group's peak usage against the limit, OOM kills,
whether every request answered 200 with its tokens, and the load time.

    .venv/bin/python bench/bench_memory_limit.py [--sizes llama-3.1-8b,...] [--no-doc]
        [--report JSON]

Writes .state/bench/memory-limit.json and the "memory-limit" section of docs/benchmarks.md
(with --no-doc: the -scratch JSON only). Needs root (a cgroup).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import common, sizes_report
from bench.bench_sizes import Counter, body, model_file, ours_env
from bench.cgroup import Cgroup
from bench.common import log
from scripts.sizing_table import quantity_bytes

MIB = 1024 * 1024


def drop_cached(path) -> None:
    """Drop the file's clean pages from the page cache (a later read is charged anew)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_size(name: str, row: dict, args, ctr: Counter) -> dict:
    model = model_file(name, args.quant)
    threads = min(row["threads"], os.cpu_count() or 1)
    env = ours_env(row, args.n_ctx, threads, common.file_model_env(model))
    drop_cached(model)
    group = Cgroup(f"llmfn-bench-mem-{os.getpid()}", memory_bytes=quantity_bytes(row["memory"]))
    srv = common.gunicorn_server(common.free_port(), env)
    out: dict = {"memory": row["memory"], "slots": row["slots"], "threads": threads,
                 "file_bytes": model.stat().st_size, "requests": [], "ok": False}
    try:
        with group.inside():  # the server and its worker start in the group
            srv.start()
        try:
            out["load_s"] = srv.wait_ready(deadline_s=1800)
            out["ready"] = common.http_get(f"{srv.url}/health/readiness")[1].decode()[:400]
            text = " ".join([common.STORY_PROMPT] * args.prompt_repeat)
            long = common.post_completion(srv.port, {**body(ctr.take(), max_tokens=2,
                                                            prompt=text)}, timeout_s=1800)
            out["prompt_tokens"] = long.prompt_tokens
            out["requests"].append(long.completion_tokens == 2)
            first = ctr.take(row["slots"])
            with ThreadPoolExecutor(row["slots"]) as pool:
                done = list(pool.map(lambda k: common.post_completion(
                    srv.port, body(first + k, max_tokens=args.max_tokens), timeout_s=1800),
                    range(row["slots"])))
            out["requests"] += [t.completion_tokens == args.max_tokens for t in done]
            out["rss_kb"] = srv.memory_kb()
            out.update(group.memory())  # the working set while the model is loaded
        except Exception as err:  # an OOM kill shows as a failed request or start
            out["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        out["alive"] = srv.running
        out.update({k: v for k, v in group.memory().items() if k != "working_set"})
        out["ok"] = (out["alive"] and all(out["requests"]) and len(out["requests"]) > 1
                     and not out["oom_kills"] and "error" not in out)
    finally:
        srv.stop()
        group.remove()
    log(f"{name}: limit {row['memory']}, peak {(out.get('peak') or 0) / MIB:,.0f} MiB, "
        f"OOM kills {out.get('oom_kills')}, ok {out['ok']}")
    return out


def render(d: dict) -> str:
    rows = ["| model | memory limit (example) | SLOTS | threads | generate's `need` "
            "(readiness) | working set after the load | of the limit | peak usage of the "
            "group (page cache included) | OOM kills | requests | load s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["results"].items():
        ready = r.get("ready", r.get("error", "n/a")).split(";")[0].replace("|", "/")
        need = ready.split(" = ")[-1].split(" of ")[0] if " = " in ready else ready
        peak, ws, limit = r.get("peak"), r.get("working_set"), r.get("limit") or 1
        rows.append(
            f"| {name} | {r['memory']} | {r['slots']} | {r['threads']} | {need} "
            f"| {'n/a' if ws is None else f'{ws / MIB:,.0f} MiB'} "
            f"| {'n/a' if ws is None else f'{ws / limit * 100:.0f} %'} "
            f"| {'n/a' if peak is None else f'{peak / MIB:,.0f} MiB'} "
            f"| {r.get('oom_kills', 'n/a')} | {sum(r['requests'])}/{1 + r['slots']} 200 with "
            f"their tokens{'' if r['ok'] else ' (FAILED)'} | {r.get('load_s') or 0:.1f} |")
    return "\n".join([
        "## Sizing examples under their memory limit",
        "",
        f"{d['machine']}. Each example's generate (deploy/examples/<model>: SLOTS, N_CTX "
        f"{d['n_ctx']}, flash attention on) in a cgroup limited to the example's memory "
        "(page cache included, as a container's; the file's cached pages dropped first), on "
        f"the synthetic {d['quant'].upper()} GGUF of its shape. Load: a prompt of "
        f"about {d['prompt_tokens']} tokens (more than N_UBATCH 512: the largest compute "
        f"buffer), then SLOTS streams of {d['max_tokens']} tokens at once. Working set: the "
        "group's anonymous memory + mapped file pages after that load (llama.cpp's repacked "
        "weights, the KV cache, compute buffers, the tensors it reads in place, and the file "
        "pages it read to repack, which stay mapped but which reclaim drops when the group "
        "reaches its limit, as in the rows whose peak is the limit: an upper bound of what "
        "the process needs); `need` is generate's start-up arithmetic (weights as "
        "the file's size + SLOTS x KV + a 160 MiB runtime allowance). Peak: the group's usage "
        "(v2 memory.peak, v1 memory.max_usage_in_bytes), page cache the kernel may reclaim "
        "included, so a peak at the limit is reclaim at work, not an OOM; the OOM kills column "
        "is the verdict. generate reads the memory limit at the root of its cgroup "
        "mount, which is the container's own in a pod; here, without a cgroup namespace, it "
        "sees the machine's memory (the readiness text), so SLOTS and N_THREADS are the "
        "example's explicit values, as the overlays set them.",
        "",
        *rows,
        "",
        f"Reproduce: `{d['command']}` (`bench/bench_memory_limit.py`), "
        f"{d['wall_s'] / 60:.0f} min.",
    ])


def main(argv: list[str] | None = None) -> int:
    table = json.loads(sizes_report.TABLE.read_text())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(table["models"]))
    ap.add_argument("--quant", default=table["quant"], choices=("q4_k_m", "q8_0"))
    ap.add_argument("--prompt-repeat", type=int, default=14,
                    help="copies of the story prompt in the long prompt (~600 tokens)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--report", type=Path, help="no run: the report of this JSON")
    args = ap.parse_args(argv)
    if args.report:
        common.publish("memory-limit", json.loads(args.report.read_text()), render,
                       no_doc=args.no_doc)
        return 0
    sizes = [s.strip() for s in args.sizes.split(",")]
    if not set(sizes) <= set(table["models"]):
        ap.error(f"--sizes: choose from {', '.join(table['models'])}")
    if not (1 <= args.prompt_repeat <= 64 and 1 <= args.max_tokens <= 256):
        ap.error("--prompt-repeat 1..64, --max-tokens 1..256")
    args.n_ctx = table["n_ctx"]
    data: dict = {**common.run_stamp(), "quant": args.quant, "n_ctx": args.n_ctx,
                  "max_tokens": args.max_tokens,
                  "command": "make bench-memory-limit" + (
                      f' BENCH_ARGS="{" ".join(argv or sys.argv[1:])}"'
                      if (argv or sys.argv[1:]) else ""), "results": {}}
    ctr = Counter()
    t0 = time.perf_counter()
    for name in sizes:
        data["results"][name] = run_size(name, table["models"][name], args, ctr)
    data["prompt_tokens"] = max((r.get("prompt_tokens") or 0)
                                for r in data["results"].values())
    data["wall_s"] = time.perf_counter() - t0
    common.publish("memory-limit", data, render, no_doc=args.no_doc)
    return 0 if all(r["ok"] for r in data["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
