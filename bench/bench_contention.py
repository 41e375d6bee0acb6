#!/usr/bin/env python3
"""Latency under CPU contention: our generate function (gunicorn) vs llama-server.

The servers run at once on the same GGUF (SmolLM2-135M-Instruct Q4_1) with the same n_ctx,
threads, batch and no flash attention (as bench_generate.py). Ours gets N_THREADS and its
OpenMP wait settings from the flags (deploy/generate.yaml's values are printed next to them).
llama-server runs once per OpenMP setting asked for a condition (``--theirs-quiet``,
``--theirs-hog``): ``spin`` = its default (OMP_WAIT_POLICY unset, libgomp spins 300,000 times
before it sleeps), ``passive`` = OMP_WAIT_POLICY=passive; its best setting differs per
condition (spin when quiet, passive beside a busy neighbour), so each is measured. Each request
is a greedy /v1/completions (JSON, temperature 0) of exactly ``--max-tokens`` tokens, checked
on every side from ``usage`` (the run fails otherwise); every request round gets a prompt with
a new leading number, so no server reuses a cached prompt. Requests rotate over the servers,
the order reversed every other round (ABBA), ``--requests`` per server and condition:

- quiet: nothing else started by the benchmark;
- hog: a busy-loop process pinned (sched_setaffinity) to one core (``--hog-cpu``), started
  before the condition and killed after it; it also exits by itself after ``--hog-max-s`` or
  when this process is gone;
- quota (``--cgroup-quota CPUS``): each server's processes moved into a cgroup of its own
  limited to CPUS CPUs (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us), quiet; moved back after.
  If this machine does not let us create one, the reason is printed and the condition skipped.

``--variants deployed,passive,spin=10000`` runs the whole sequence once per OpenMP setting of
ours, each phase with a fresh ours next to the same llama-servers, so one setting's spinning
threads never overlap another phase. A variant is ``+``-joined parts: ``passive``, ``active``
or ``unset`` (OMP_WAIT_POLICY; unset when no part names it), ``spin=N`` (GOMP_SPINCOUNT=N),
``threads=N`` (ours' N_THREADS instead of ``--threads``), ``fixed`` (ADAPTIVE_THREADS=0: every
decode step takes all N_THREADS instead of as many as CPUs are free, llmfn.cpu_share), or
``deployed`` alone (what deploy/generate.yaml sets). Reported per phase, condition and server:
median, p95 (nearest rank) and p100 (max) of the client-side latency, and ours / llama-server.
Targets (issue 24, N_THREADS=2): quiet p100 <= 1.1 x llama-server spinning, beside the hog
p100 <= 1.2 x llama-server passive.

    .venv/bin/python bench/bench_contention.py [--requests 30] [--variants deployed,passive]
        [--theirs-quiet spin,passive] [--theirs-hog passive] [--cgroup-quota 1] [--no-doc]

Writes .state/bench/contention.json and the "contention" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.cgroup import Cgroup
from bench.common import log, percentile

LLAMA = "llama-server"
PLOT = common.REPO_ROOT / "docs" / "img" / "bench-contention.png"
POLICIES = ("passive", "active", "unset")
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
THEIRS = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "passive"}}  # llama-server's settings
TARGETS = {"quiet": ("spin", 1.1), "hog": ("passive", 1.2)}  # condition: (theirs, max ratio)
HOG_CODE = """
import os, sys, time
cpu, bound_s, parent = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
end = time.monotonic() + bound_s
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(200000):
        pass
"""


def variant_env(variant: str, deployed: dict[str, str]) -> dict[str, str]:
    """The OpenMP environment of ours for a ``--variants`` entry (see the module docstring)."""
    if variant == "deployed":
        return {k: deployed[k] for k in OMP_KEYS if k in deployed}
    env: dict[str, str] = {}
    for part in variant.split("+"):
        key, _, value = part.partition("=")
        if part in POLICIES and "OMP_WAIT_POLICY" not in env:
            if part != "unset":
                env["OMP_WAIT_POLICY"] = part
        elif key == "spin" and value.isdigit() and "GOMP_SPINCOUNT" not in env:
            env["GOMP_SPINCOUNT"] = value
        elif part == "fixed" and "ADAPTIVE_THREADS" not in env:
            env["ADAPTIVE_THREADS"] = "0"  # every step N_THREADS, whatever the CPUs do
        elif key == "threads" and value.isdigit() and "N_THREADS" not in env:
            env["N_THREADS"] = value  # ours only; llama-server keeps --threads
        else:
            raise ValueError(f"bad variant part {part!r} in {variant!r}")
    return env


@contextlib.contextmanager
def cpu_hog(cpu: int, bound_s: float):
    """A busy loop pinned to ``cpu`` for the duration of the ``with`` block (at most bound_s)."""
    proc = subprocess.Popen([sys.executable, "-c", HOG_CODE, str(cpu), str(bound_s),
                             str(os.getpid())], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"CPU hog exited {proc.returncode}")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def probe_quota(cpus: float) -> str | None:
    """None when a CPU quota cgroup can be made here, else why not."""
    try:
        Cgroup(f"llmfn-bench-probe-{os.getpid()}", cpus=cpus).remove()
        return None
    except (OSError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def condition(name: str, servers: dict[str, common.Server], args):
    """Set up one condition around the ``with`` block and undo it afterwards."""
    if name == "hog":
        with cpu_hog(args.hog_cpu, args.hog_max_s):
            yield
    elif name == "quota":
        groups = []
        try:
            for i, srv in enumerate(servers.values()):
                groups.append(Cgroup(f"llmfn-bench-{os.getpid()}-{i}", cpus=args.cgroup_quota))
                groups[-1].add(srv.pids())
            yield
        finally:
            for g in groups:
                g.remove()
    else:
        yield


def measure(servers: dict[str, common.Server], n: int, max_tokens: int, first: int) -> dict:
    """``n`` requests per server, ABBA order; latencies (s). Fails if a count is not max_tokens."""
    lat: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    for i in range(n):
        for name in (names if i % 2 == 0 else names[::-1]):
            t = common.post_completion(servers[name].port, common.completion_body(
                first + i, stream=False, max_tokens=max_tokens))
            if t.completion_tokens != max_tokens:
                raise SystemExit(f"{name}: {t.completion_tokens} completion tokens, not "
                                 f"{max_tokens} (prompt {first + i + 1}., text {t.text!r}): "
                                 "pick a prompt that does not stop early")
            lat[name].append(t.total_s)
    return lat


_STEPS = re.compile(r'^llmfn_decode_steps_total\{threads="(\d+)"\} ([0-9.e+]+)$', re.MULTILINE)


def decode_steps(port: int) -> dict[str, int]:
    """Ours' llama_decode calls so far by their thread count (its /metrics)."""
    status, body = common.http_get(f"http://{common.HOST}:{port}/metrics", timeout_s=10.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return {n: int(float(v)) for n, v in _STEPS.findall(body.decode())}


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "p95": percentile(values, 0.95),
            "p100": max(values), "n": len(values)}


def plot(d: dict, out: Path) -> None:
    """Latency per request of each variant of ours and each llama-server setting (pooled over
    the phases), per condition (matplotlib, Agg; log scale when the spread is wide)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, series, colors = [], [], []
    conds = list(next(iter(d["results"].values())))
    for cond in conds:
        theirs: dict[str, list[float]] = {}
        for variant, res in d["results"].items():
            for name, values in res[cond]["raw_s"].items():
                if name.startswith("ours"):
                    labels.append(f"{cond}\nours\n{variant}")
                    series.append(values)
                    colors.append("tab:blue")
                else:
                    theirs.setdefault(name, []).extend(values)
        for name, values in theirs.items():
            labels.append(f"{cond}\n{name.replace(' (', chr(10) + '(')}")
            series.append(values)
            colors.append("tab:orange")
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(labels)), 4.5))
    box = ax.boxplot(series, whis=(0, 100), patch_artist=True)
    for patch, color in zip(box["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    flat = [v for vs in series for v in vs]
    if max(flat) > 20 * min(flat):
        ax.set_yscale("log")
    ax.set(ylabel=f"request latency, s ({d['max_tokens']} tokens)",
           title=f"{d['model']}, {d['threads']} threads: ours (blue) per OpenMP setting, "
                 "llama-server (orange)\nquiet, beside a one-core busy loop (whiskers: min-max)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="y")
    common.save_figure(fig, out, footer=common.figure_footer(d, "make bench-contention"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                    help="draw docs/img/bench-contention.png from an earlier run's results")
    ap.add_argument("--requests", type=int, default=30, help="per server and condition")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="N_THREADS of ours, -t of theirs")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--omp-wait-policy", default="passive", choices=POLICIES,
                    help="OMP_WAIT_POLICY of ours, as deployed")
    ap.add_argument("--variants", default=None,
                    help="comma-separated OpenMP settings of ours, one phase each: deployed, "
                         "passive|active|unset, spin=N, joined with + (default: "
                         "--omp-wait-policy)")
    ap.add_argument("--theirs-quiet", default="spin,passive",
                    help="llama-server's OpenMP settings measured quiet (and under the quota)")
    ap.add_argument("--theirs-hog", default="passive",
                    help="llama-server's OpenMP settings measured beside the hog")
    ap.add_argument("--conditions", default="quiet,hog",
                    help="quiet and/or hog (the cgroup quota is added by --cgroup-quota)")
    ap.add_argument("--hog-cpu", type=int, default=max(os.sched_getaffinity(0)))
    ap.add_argument("--hog-max-s", type=float, default=900.0,
                    help="the hog exits by itself after this long")
    ap.add_argument("--cgroup-quota", type=float, default=None, metavar="CPUS",
                    help="add a quiet condition with each server in a cgroup of CPUS CPUs")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--no-plot", action="store_true",
                    help="no picture (tests/test_contention.py: no matplotlib in make test)")
    args = ap.parse_args(argv)
    if args.plot_only is not None:
        plot(json.loads(args.plot_only.read_text()), PLOT)
        return 0
    variants = (args.variants or args.omp_wait_policy).split(",")
    manifest = common.deployed_env()
    try:
        variant_envs = {v: variant_env(v, manifest) for v in variants}
    except ValueError as err:
        ap.error(str(err))
    theirs_for = {c: getattr(args, f"theirs_{c}").split(",") for c in ("quiet", "hog")}
    theirs_for["quota"] = theirs_for["quiet"]
    if not 1 <= args.requests <= 500 or any(
            t not in THEIRS for ts in theirs_for.values() for t in ts):
        ap.error(f"--requests must be 1..500, --theirs-* a subset of {','.join(THEIRS)}")
    for key in OMP_KEYS:
        if key in os.environ:
            ap.error(f"unset {key}: the benchmark sets the wait policy per server")

    deployed = {k: manifest.get(k, "unset") for k in ("N_THREADS", *OMP_KEYS)}
    if deployed["N_THREADS"] != str(args.threads):
        log(f"note: deploy/generate.yaml sets {deployed}, this run uses N_THREADS="
            f"{args.threads}")
    conditions = [c for c in args.conditions.split(",") if c]
    if not conditions or not set(conditions) <= {"quiet", "hog"}:
        ap.error("--conditions: quiet and/or hog")
    quota_problem = None
    if args.cgroup_quota is not None:
        quota_problem = probe_quota(args.cgroup_quota)
        if quota_problem:
            log(f"cgroup CPU quota not possible here: {quota_problem}")
        else:
            conditions.append("quota")

    model = common.smollm2_path()
    base_env = common.generate_env(common.file_model_env(model), n_ctx=args.n_ctx,
                                   threads=args.threads)
    needed = [t for t in THEIRS if any(t in theirs_for[c] for c in conditions)]
    theirs = {t: common.llama_server(common.free_port(), model, n_ctx=args.n_ctx,
                                     threads=args.threads, env=THEIRS[t]) for t in needed}
    results: dict[str, dict] = {}
    loads: dict[str, dict] = {}
    prompt_no = 100
    try:
        for t, srv in theirs.items():
            log(f"{LLAMA} ({t}): ready in {srv.start().wait_ready():.2f} s")
        for variant, omp_env in variant_envs.items():
            ours = common.gunicorn_server(common.free_port(), {**base_env, **omp_env})
            try:
                log(f"ours, {variant} {omp_env}: ready in {ours.start().wait_ready():.2f} s")
                for srv in (ours, *theirs.values()):  # warm-up
                    common.post_completion(srv.port, common.completion_body(
                        0, stream=False, max_tokens=8))
                for cond in conditions:
                    servers = {f"ours ({variant})": ours,
                               **{f"{LLAMA} ({t})": theirs[t] for t in theirs_for[cond]}}
                    loads.setdefault(variant, {})[cond] = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    steps0 = decode_steps(ours.port)
                    with condition(cond, servers, args):
                        lat = measure(servers, args.requests, args.max_tokens, prompt_no)
                    steps1 = decode_steps(ours.port)
                    steps = {n: steps1[n] - steps0.get(n, 0) for n in sorted(steps1)
                             if steps1[n] > steps0.get(n, 0)}
                    prompt_no += args.requests
                    res = {name: stats(v) for name, v in lat.items()}
                    results.setdefault(variant, {})[cond] = {
                        "ours": res[f"ours ({variant})"], "omp_env": omp_env,
                        "load_1min_before": loads[variant][cond],
                        "decode_steps_by_threads": steps,
                        "theirs": {t: res[f"{LLAMA} ({t})"] for t in theirs_for[cond]},
                        "raw_s": lat}
                    log(f"{variant}/{cond} in {time.perf_counter() - t0:.0f} s (load "
                        f"{loads[variant][cond]:.2f} before, ours' decode steps by threads "
                        f"{steps}): " + ", ".join(
                            f"{n} median {s['median']:.3f} p100 {s['p100']:.3f}"
                            for n, s in res.items()))
            finally:
                ours.stop()
    finally:
        for srv in theirs.values():
            srv.stop()

    data = {**common.run_stamp(), "model": model.name, "requests": args.requests,
            "max_tokens": args.max_tokens, "threads": args.threads, "n_ctx": args.n_ctx,
            "omp_wait_policy": args.omp_wait_policy, "deployed": deployed,
            "hog_cpu": args.hog_cpu, "cgroup_quota_cpus": args.cgroup_quota,
            "cgroup_quota_problem": quota_problem, "results": results}
    common.publish("contention", data, render, no_doc=args.no_doc)
    if not args.no_plot:
        plot(data, common.STATE / "bench" / "contention-scratch.png" if args.no_doc else PLOT)
    return 0


def render(d: dict) -> str:
    def cells(s: dict) -> str:
        return " / ".join(f"{s[k]:.3f}" for k in ("median", "p95", "p100"))

    lines = ["| ours: OpenMP setting | condition (load before) | ours (s) | llama-server "
             "setting | llama-server (s) | ours / llama-server |", "|---|---|---|---|---|---|"]
    verdicts = []
    for variant, conds in d["results"].items():
        for cond, r in conds.items():
            env = " ".join(f"{k}={v}" for k, v in r["omp_env"].items()) or "none set"
            for t, theirs in r["theirs"].items():
                q = {k: r["ours"][k] / theirs[k] for k in ("median", "p95", "p100")}
                lines.append(f"| {variant} ({env}) | {cond} ({r['load_1min_before']:.2f}) | "
                             f"{cells(r['ours'])} | {t} | {cells(theirs)} | "
                             + " / ".join(f"{q[k]:.2f}" for k in ("median", "p95", "p100"))
                             + " |")
                if TARGETS.get(cond, (None,))[0] == t:
                    limit = TARGETS[cond][1]
                    verdicts.append(f"{variant}: {cond} p100 {q['p100']:.2f} x llama-server "
                                    f"{t} ({'met' if q['p100'] <= limit else 'NOT met'}, "
                                    f"target <= {limit})")
    quota = ""
    if d["cgroup_quota_problem"]:
        quota = f" A cgroup CPU quota could not be made here ({d['cgroup_quota_problem']})."
    elif d["cgroup_quota_cpus"] is not None:
        quota = (f" quota: each server in a cgroup of its own limited to "
                 f"{d['cgroup_quota_cpus']:g} CPU, quiet.")
    dep = ", ".join(f"{k}={v}" for k, v in d["deployed"].items())
    return "\n".join([
        "## Latency under CPU contention: our function vs llama-server",
        "",
        f"Machine: {d['machine']}, shared with other jobs (1-minute load average before each "
        f"condition in the table). Model {d['model']}, n_ctx {d['n_ctx']}, {d['threads']} "
        "threads (ours: N_THREADS), no flash attention, greedy, "
        f"exactly {d['max_tokens']} completion tokens per request (checked from `usage`), "
        f"/v1/completions JSON. {d['requests']} requests per server and condition, rotating "
        "over the servers, the order reversed every other round (ABBA); client-side latency "
        f"median / p95 / p100 (max) in seconds. deploy/generate.yaml: {dep}. llama-server "
        "settings: spin = its default (OMP_WAIT_POLICY unset: libgomp spins 300,000 times, "
        "about 3 ms, before it sleeps), passive = OMP_WAIT_POLICY=passive.",
        "",
        *lines,
        "",
        f"- quiet: no load started by the benchmark. hog: a busy loop pinned to CPU "
        f"{d['hog_cpu']} during the condition.{quota}",
        "- Each row group of ours is its own phase with a fresh ours next to the same "
        "llama-servers.",
        *[f"- {v}" for v in verdicts],
        "",
        "Reproduce: `make bench-contention` (`bench/bench_contention.py`; "
        "`BENCH_ARGS=\"--variants deployed,passive,spin=10000 --cgroup-quota 1\"`).",
        "",
        "![request latency per condition, ours vs llama-server](img/bench-contention.png)",
    ])


if __name__ == "__main__":
    sys.exit(main())
