#!/usr/bin/env python3
"""Decode speed of the portable llama-cpp-python build vs the native one, in-process.

The native build is the project venv's (`-march=native`, one CPU backend linked in); the
portable one is .state/venv-portable from scripts/build_portable_wheel.sh (GGML_NATIVE=OFF,
every x86 CPU variant as a loadable backend, the best one picked at run time), as the
Containerfile builds it. Each measurement is a fresh worker process running llama_cpp
directly (no HTTP): load SmolLM2-135M-Instruct Q4_1, one warm-up generation, then greedy
generations of exactly --max-tokens tokens (EOS not honoured). Worker processes alternate
native / portable so machine drift hits both.

    .venv/bin/python bench/bench_portable.py [--rounds 3 --runs 3]
    .state/venv-portable/bin/python bench/bench_portable.py --check   # loads? which variant?

Writes .state/bench/portable.json and the "Portable build" section of docs/benchmarks.md.
Worker code uses only the stdlib and llama_cpp, so it runs in either venv.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

# also run by the portable venv: scripts/build_portable_wheel.sh installs llmfn and llmfn-dev
# there (editable, without their dependencies), beside llama_cpp
from bench import common
from llmfn.llama_backend import ensure_cpu_backend

HERE = Path(__file__).resolve().parent

PORTABLE_PY = common.STATE / "venv-portable" / "bin" / "python"
PROMPT = ("The history of clockmaking is long. Early clocks used water and sand; later, "
          "weights and springs drove gears that moved the hands. ") * 4 + "In the year"


def cpu_libraries() -> list[str]:
    """The ggml CPU backend libraries mapped into this process."""
    with open("/proc/self/maps") as f:
        names = {m.group(0) for m in re.finditer(r"\S*libggml-cpu\S*\.so\S*", f.read())}
    return sorted(names)


def worker(model: str, runs: int, max_tokens: int, threads: int, n_ctx: int) -> dict:
    """Load the model, warm up, then time ``runs`` greedy generations of ``max_tokens``."""
    how = ensure_cpu_backend()
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, n_ubatch=512, verbose=False)
    load_s = time.perf_counter() - t0
    out = {"backend": how, "cpu_libraries": cpu_libraries(), "load_s": load_s,
           "system_info": llama_cpp.llama_print_system_info().decode().strip(),
           "prompt_tps": [], "decode_tps": []}
    for i in range(runs + 1):  # the first is a warm-up
        tokens = llm.tokenize(f"{i}. {PROMPT}".encode(), add_bos=True, special=False)
        llm.reset()
        n, t_start = 0, time.perf_counter()
        t_first = t_last = None
        for _ in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            n += 1
            t_last = time.perf_counter()
            if t_first is None:
                t_first = t_last
            if n >= max_tokens:
                break
        if i == 0:
            continue
        out["prompt_tps"].append(len(tokens) / (t_first - t_start))
        out["decode_tps"].append((n - 1) / (t_last - t_first))
        out["prompt_tokens"], out["completion_tokens"] = len(tokens), n
    return out


def check(model: Path | None) -> int:
    """Does this interpreter's llama_cpp load a model, and with which CPU backend?"""
    import llama_cpp

    print("llama_cpp", llama_cpp.__version__, "from", Path(llama_cpp.__file__).parent)
    how = ensure_cpu_backend()
    print("CPU backend:", how)
    print("system info:", llama_cpp.llama_print_system_info().decode().strip())
    if model:
        llama_cpp.Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False)
        print("model loaded:", model)
    print("CPU backend libraries mapped:", ", ".join(cpu_libraries()) or "none (linked in)")
    return 0


def run_worker(python: Path, args) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", "--model", str(args.model),
           "--runs", str(args.runs), "--max-tokens", str(args.max_tokens),
           "--threads", str(args.threads), "--n-ctx", str(args.n_ctx)]
    # cwd=/ : the current directory is one of ggml's backend search paths; keep it empty.
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    if res.returncode != 0:
        raise RuntimeError(f"{python} worker failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help="report backend and variant, exit")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="worker processes per build")
    ap.add_argument("--runs", type=int, default=3, help="measured generations per worker")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.model)
    if args.worker:
        print(json.dumps(worker(str(args.model), args.runs, args.max_tokens, args.threads,
                                args.n_ctx)))
        return 0
    if not (1 <= args.rounds <= 20 and 1 <= args.runs <= 20):
        ap.error("--rounds and --runs must be 1..20")
    if not PORTABLE_PY.exists():
        raise SystemExit(f"{PORTABLE_PY} missing: run scripts/build_portable_wheel.sh")
    args.model = args.model or common.smollm2_path()
    builds = {"native": common.VENV_PY, "portable": PORTABLE_PY}
    results = {name: [] for name in builds}
    for r in range(args.rounds):
        for name, python in builds.items():
            results[name].append(run_worker(python, args))
        last = {n: sorted(results[n][-1]["decode_tps"]) for n in builds}
        common.log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {tps[len(tps) // 2]:.1f} tok/s" for n, tps in last.items()))
    data = {**common.run_stamp(), "model": args.model.name, "rounds": args.rounds,
            "runs": args.runs, "max_tokens": args.max_tokens, "threads": args.threads,
            "results": results}
    common.publish("portable", data, render, no_doc=args.no_doc)
    return 0


def render(d: dict) -> str:
    res = d["results"]
    s = {n: {k: common.summary([v for w in ws for v in w[k]])
             for k in ("decode_tps", "prompt_tps")} for n, ws in res.items()}
    s_load = {n: common.summary([w["load_s"] for w in ws]) for n, ws in res.items()}
    libs = {n: ", ".join(sorted({lib.rsplit("/", 1)[-1] for w in ws for lib in w["cpu_libraries"]}))
            or "linked in" for n, ws in res.items()}
    lines = ["| figure | native | portable | portable / native |", "|---|---|---|---|"]
    for label, key in (("decode tok/s", "decode_tps"), ("prompt tok/s", "prompt_tps")):
        r = common.ratio(s["portable"][key], s["native"][key])
        lines.append(f"| {label} | {common.fmt(s['native'][key], digits=1)} | "
                     f"{common.fmt(s['portable'][key], digits=1)} | {r:.2f} |")
    r = common.ratio(s_load["portable"], s_load["native"])
    lines.append(f"| model load (s) | {common.fmt(s_load['native'])} | "
                 f"{common.fmt(s_load['portable'])} | {r:.2f} |")
    first = {n: ws[0] for n, ws in res.items()}
    return "\n".join([
        "## Portable build vs native build",
        "",
        f"Machine: {d['machine']}, shared with other jobs. In-process llama_cpp (no HTTP), "
        f"{d['model']}, {d['threads']} threads, greedy, exactly {d['max_tokens']} generated "
        f"tokens from a {first['native'].get('prompt_tokens')}-token prompt. {d['rounds']} "
        f"worker processes per build, alternating, each {d['runs']} measured generations "
        "after one warm-up; median (min-max) over all generations.",
        "",
        *lines,
        "",
        f"- native: the project venv's wheel (`-march=native`); CPU backend: {libs['native']}.",
        f"- portable: `scripts/build_portable_wheel.sh` (GGML_NATIVE=OFF, GGML_BACKEND_DL=ON, "
        f"GGML_CPU_ALL_VARIANTS=ON); variant ggml picked here: {libs['portable']}; "
        f"{first['portable']['backend']}.",
        "",
        "Reproduce: `make bench-portable` (`bench/bench_portable.py`).",
    ])


if __name__ == "__main__":
    sys.exit(main())
