#!/usr/bin/env python3
"""Cold start of the generate function from a real MinIO: import profile, download throughput,
and start to ready / first token per scenario against llama-server on the same file.

One run measures, interleaved:

1. Import profile (``--baseline-rev``): ``python -X importtime -c "import function.func"`` of
   the generate function as it is and as it was at the baseline revision (``git archive``,
   read-only), warm cache: wall time, CPU time and the heaviest packages.
2. Throughput, in this process, on the 500 MB file: the disk's own sequential write (1 MiB
   writes + fsync into the cache directory), ours (``llmfn.weights.fetch``: parallel ranged
   GETs, hashed on the way, fsync) and the single-stream baseline (one boto3 ``get_object``
   with boto3's default client config, its body copied to disk with ``shutil.copyfileobj``,
   then fsync, as KServe's storage-initializer streams an object), straight to MinIO and
   through a proxy (scripts/tcp_throttle.py) that caps each connection's bandwidth and adds
   latency the way a cluster's S3 does.
3. Cold starts, per model (SmolLM2-135M Q4_1, 94 MB; a synthetic 0.5B Q8_0, 500 MB, made by
   scripts/make_synthetic_gguf.py) and scenario (empty cache, warm cache) for gunicorn and
   func-python (and the baseline revision under gunicorn), and llama-server on the same local
   file: start to ready (readiness 200, polled every 20 ms), start to first token (ready + the
   first request's time to first token, as Knative's activator forwards a held request), and
   the phases from ``llmfn_cold_start_seconds``.

    .venv/bin/python bench/bench_coldstart.py [--runs 3] [--baseline-rev REV]

Writes .state/bench/coldstart.json, docs/img/bench-coldstart.png and the "Cold start"
section of docs/benchmarks.md. Load averages are recorded with every measurement: the
machine is shared, so read the ratios (measured in the same run, interleaved).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench import common
from bench.common import fmt, log, summary
from scripts import procs, services, upload_model
from scripts.tcp_throttle import Throttle

HERE = Path(__file__).resolve().parent

BUCKET = "bench"
SYNTH = common.STATE / "models" / "synthetic-0.5b-q8_0.gguf"
PHASES = ("import", "download", "verify", "fetch_wait", "load", "load_wait")
DEPLOY_DOC = common.REPO_ROOT / "docs" / "deploy.md"
SCENARIOS = ("empty cache", "empty cache, capped S3", "warm cache")
GB4 = 4e9  # the extrapolated row of the budget
_METRIC = re.compile(r'^llmfn_cold_start_seconds\{phase="(\w+)"\} ([0-9.eE+-]+)$', re.M)
IMG = common.REPO_ROOT / "docs" / "img" / "bench-coldstart.png"


def load() -> float:
    return os.getloadavg()[0]


# -- models and MinIO -----------------------------------------------------------------------------
def models() -> dict[str, Path]:
    if not SYNTH.exists():
        script = HERE.parent / "scripts" / "make_synthetic_gguf.py"
        subprocess.run([str(common.VENV_PY), str(script), "--out", str(SYNTH)], check=True)
    return {"94 MB": common.smollm2_path(), "500 MB": SYNTH}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


# -- 1. import profile ----------------------------------------------------------------------------
def baseline_tree(rev: str, dest: Path) -> Path:
    """functions/generate and llmfn as they were at ``rev`` (git archive; read-only)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(common.REPO_ROOT), "archive", rev,
                           "functions/generate/function", "llmfn/src/llmfn"],
                          check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(data)).extractall(dest)
    shutil.copytree(dest / "llmfn/src/llmfn", dest / "functions/generate/llmfn")
    return dest / "functions" / "generate"


def import_profile(fn_dir: Path, env: dict) -> dict:
    """One ``-X importtime`` import of function.func: wall, CPU, self time by top package."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([str(common.VENV_PY), "-X", "importtime", "-c", "import function.func"],
                         cwd=fn_dir, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    by_pkg: dict[str, float] = {}
    n = 0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            n += 1
            pkg = m.group(4).split(".")[0]
            by_pkg[pkg] = by_pkg.get(pkg, 0.0) + int(m.group(1)) / 1e6
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime), "modules": n, "by_pkg": by_pkg,
            "loadavg": load()}


# -- 2. throughput --------------------------------------------------------------------------------
def disk_write(dirpath: Path, size: int) -> float:
    """Seconds to write ``size`` bytes sequentially (1 MiB writes) and fsync."""
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / "disk-write.tmp"
    buf = os.urandom(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, buf[:min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)
    s = time.perf_counter() - t0
    path.unlink()
    return s


def single_stream(endpoint: str, creds: dict, key: str, dirpath: Path) -> float:
    """The baseline: one get_object, boto3's default client config, body copied to a file."""
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / "single.tmp"
    t0 = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    with open(path, "wb") as f:
        shutil.copyfileobj(body, f)
        f.flush()
        os.fsync(f.fileno())
    s = time.perf_counter() - t0
    path.unlink()
    return s


def ours_fetch(endpoint: str, creds: dict, key: str, cache: Path, digest: str) -> float:
    """llmfn.weights.fetch into an empty cache (the settings' defaults), wall seconds."""
    from llmfn import settings, weights
    shutil.rmtree(cache, ignore_errors=True)
    st = settings.build(settings.StorageSettings, {
        "MODEL_URI": f"s3://{BUCKET}/{key}", "MODEL_CACHE_DIR": str(cache),
        "MODEL_SHA256": digest, "S3_ENDPOINT_URL": endpoint})
    old = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    try:
        t0 = time.perf_counter()
        res = weights.fetch(st)
        s = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert res.sha256 == digest and not res.cached
    shutil.rmtree(cache, ignore_errors=True)
    return s


def throughput(minio, key: str, size: int, digest: str, work: Path, runs: int,
               rate_bps: float, latency_s: float) -> dict:
    creds = {k: v for k, v in minio.client_env().items() if k.startswith("AWS_")}
    direct = minio.endpoint_url
    out: dict[str, list] = {k: [] for k in ("disk write", "ours", "single stream",
                                            "ours, capped", "single stream, capped")}
    with Throttle(("127.0.0.1", minio.port), rate_bps=rate_bps, latency_s=latency_s) as proxy:
        for i in range(runs):
            for name, f in (
                    ("disk write", lambda: disk_write(work, size)),
                    ("ours", lambda: ours_fetch(direct, creds, key, work / "cache", digest)),
                    ("single stream", lambda: single_stream(direct, creds, key, work)),
                    ("ours, capped", lambda: ours_fetch(proxy.url, creds, key, work / "cache",
                                                        digest)),
                    ("single stream, capped", lambda: single_stream(proxy.url, creds, key, work))):
                la = load()
                s = f()
                out[name].append({"s": s, "mb_s": size / 1e6 / s, "loadavg": la})
                log(f"throughput run {i + 1}: {name} {size / 1e6 / s:.0f} MB/s (load {la:.2f})")
    return out


# -- 3. cold starts -------------------------------------------------------------------------------
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


def run_server(srv, with_phases: bool) -> dict:
    la = load()
    try:
        ready_s = srv.start().wait_ready()
        got = phases(srv.port) if with_phases else {}
        if "ready" in got:  # the process's own age when the model was loaded
            got["ready_self"] = got.pop("ready")
        got["ttft"] = first_token_s(srv.port)
    finally:
        srv.stop()
    got["ready"] = ready_s
    got["first_token"] = ready_s + got["ttft"]
    got["loadavg"] = la
    return got


def ours(kind: str, env: dict, cwd: Path | None = None) -> dict:
    port = common.free_port()
    if kind == "func-python":
        srv = common.func_python_server(port, env)
    else:
        srv = procs.gunicorn_server("generate", port, env=env, poll_s=common.POLL_S,
                                    conf=(cwd / "llmfn" / "gunicorn_conf.py") if cwd else None,
                                    log_path=common.LOG_DIR / f"coldstart-{kind}.log")
        if cwd is not None:  # the baseline tree: gunicorn --chdir there, and its llmfn first
            i = srv.cmd.index("--chdir")      # on the path (the master imports llmfn.settings
            srv.cmd[i + 1] = str(cwd)         # for its config, and the worker inherits it)
            srv.env["PYTHONPATH"] = str(cwd)
    return run_server(srv, with_phases=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--baseline-rev", default="",
                    help="also run the generate function as it was at this git revision")
    ap.add_argument("--rate-mb-s", type=float, default=40.0,
                    help="capped proxy: bandwidth per connection, MB/s")
    ap.add_argument("--latency-ms", type=float, default=2.0, help="capped proxy: one-way latency")
    ap.add_argument("--skip", default="", help="comma list of: profile,throughput,coldstart")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--models", default="", help="comma list of the model labels to start "
                    "(default all: '94 MB,500 MB')")
    ap.add_argument("--scenarios", default="", help="comma list of the scenarios (default all: "
                    + ", ".join(SCENARIOS) + "), e.g. 'warm cache' to compare warm starts")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 30:
        ap.error("--runs must be 1..30")
    skip = set(filter(None, args.skip.split(",")))

    files = models()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        if not set(wanted) <= set(files):
            ap.error(f"--models: choose from {sorted(files)}")
        files = {name: p for name, p in files.items() if name in wanted}
    scenarios = [c.strip() for c in args.scenarios.split(",")] if args.scenarios else SCENARIOS
    if not set(scenarios) <= set(SCENARIOS):
        ap.error(f"--scenarios: choose from {SCENARIOS}")
    digests = {name: sha256(p) for name, p in files.items()}
    keys = {name: p.name for name, p in files.items()}
    state = common.STATE / "bench" / "coldstart"
    services.ensure_binaries()
    minio = services.MinioServer(state / "minio", common.HOST, common.free_port(),
                                 log_path=common.LOG_DIR / "coldstart-minio.log")
    data: dict = {**common.run_stamp(), "runs": args.runs,
                  "sizes": {n: p.stat().st_size for n, p in files.items()},
                  "files": {n: p.name for n, p in files.items()},
                  "baseline_rev": args.baseline_rev, "rate_mb_s": args.rate_mb_s,
                  "latency_ms": args.latency_ms, "load_start": os.getloadavg()}
    base_dir = None
    if args.baseline_rev:
        rev = subprocess.run(["git", "-C", str(common.REPO_ROOT), "rev-parse", "--short",
                              args.baseline_rev], check=True, capture_output=True,
                             text=True).stdout.strip()
        data["baseline_rev"] = rev
        base_dir = baseline_tree(rev, state / "baseline")
    with minio:
        for name, p in files.items():
            upload_model.upload(minio.client(), str(p), BUCKET, keys[name])

        def env_for(name: str, cache: Path) -> dict:
            return common.generate_env({"MODEL_URI": f"s3://{BUCKET}/{keys[name]}",
                                        "MODEL_SHA256": digests[name],
                                        "MODEL_CACHE_DIR": str(cache), "SHUTDOWN_GRACE_S": "1",
                                        **minio.client_env()},
                                       n_ctx=args.n_ctx, threads=args.threads)

        if "profile" not in skip:
            cache = state / "cache-profile"
            env = env_for("94 MB", cache)
            from llmfn import settings, weights
            os.environ.update({k: v for k, v in minio.client_env().items()
                               if k.startswith("AWS_")})
            weights.fetch(settings.build(settings.StorageSettings, env))  # warm the cache
            prof: dict[str, list] = {"now": []}
            if base_dir is not None:
                prof["baseline"] = []
            fn_now = common.REPO_ROOT / "functions" / "generate"
            no_model = {**env, "MODEL_URI": ""}  # the imports alone: no early fetch or load
            for _ in range(args.runs + 2):
                for k in prof:
                    prof[k].append(import_profile(fn_now if k == "now" else base_dir, no_model))
            data["profile"] = prof
            walls = {k: summary([r["wall_s"] for r in v])["median"] for k, v in prof.items()}
            log("profile: " + ", ".join(f"{k} wall {w:.3f} s" for k, w in walls.items()))

        if "throughput" not in skip:
            data["throughput"] = throughput(minio, keys["500 MB"], data["sizes"]["500 MB"],
                                            digests["500 MB"], state / "tp", args.runs,
                                            args.rate_mb_s * 1e6, args.latency_ms / 1e3)

        if "coldstart" not in skip:
            res: dict = {}
            kinds = ["gunicorn", "func-python"] + (["baseline"] if base_dir else [])
            for name in files:
                res[name] = {f"{k}, {c}": [] for k in kinds for c in scenarios}
                res[name]["llama-server"] = []
            throttle = Throttle(("127.0.0.1", minio.port), rate_bps=args.rate_mb_s * 1e6,
                                latency_s=args.latency_ms / 1e3)
            with throttle as proxy:
                for i in range(args.runs):
                    for name, p in files.items():
                        for kind in kinds:
                            cache = state / f"cache-{kind}"
                            env = env_for(name, cache)
                            cwd = base_dir if kind == "baseline" else None
                            k = "gunicorn" if kind == "baseline" else kind
                            if "empty cache, capped S3" in scenarios:
                                shutil.rmtree(cache, ignore_errors=True)
                                res[name][f"{kind}, empty cache, capped S3"].append(
                                    ours(k, {**env, "S3_ENDPOINT_URL": proxy.url}, cwd))
                            if "empty cache" in scenarios:
                                shutil.rmtree(cache, ignore_errors=True)
                                res[name][f"{kind}, empty cache"].append(ours(k, env, cwd))
                            if "warm cache" in scenarios:
                                if not (cache / keys[name]).exists() and not any(
                                        cache.glob("*")):  # warm it first (not measured)
                                    ours(k, env, cwd)
                                res[name][f"{kind}, warm cache"].append(ours(k, env, cwd))
                        srv = common.llama_server(common.free_port(), p, n_ctx=args.n_ctx,
                                                  threads=args.threads)
                        res[name]["llama-server"].append(run_server(srv, with_phases=False))
                        log(f"run {i + 1}/{args.runs} {name}: " + ", ".join(
                            f"{k} {v[-1]['ready']:.2f}" for k, v in res[name].items()))
            data["coldstart"] = res
    data["load_end"] = os.getloadavg()
    common.publish("coldstart", data, render, no_doc=args.no_doc)
    if not args.no_doc and "coldstart" in data and "throughput" in data:
        common.update_doc_section("coldstart-budget", render_budget(data), doc=DEPLOY_DOC)
    if "coldstart" in data:
        plot(data, IMG if not args.no_doc else common.STATE / "bench" / "coldstart-scratch.png")
    return 0


# -- report ---------------------------------------------------------------------------------------
def med(rows: list[dict], key: str) -> float | None:
    return summary([r.get(key) for r in rows if r.get(key) is not None])["median"]


def _load_span(rows: list[dict]) -> str:
    loads = [r.get("loadavg", r.get("load")) for r in rows]
    loads = [x for x in loads if isinstance(x, (int, float))]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def render(d: dict) -> str:
    out = ["## Cold start", "",
           f"Machine: {d['machine']}, shared with other jobs (1-min load average "
           f"{d['load_start'][0]:.2f} at the start, {d['load_end'][0]:.2f} at the end; per "
           f"measurement in the tables). {d['runs']} runs, interleaved; median (min-max).", ""]
    if "profile" in d:
        out += render_profile(d)
    if "throughput" in d:
        out += render_throughput(d)
    if "coldstart" in d:
        out += render_coldstart(d)
    out += ["Reproduce: `make bench-coldstart` (`bench/bench_coldstart.py`; "
            "`BENCH_ARGS=\"--baseline-rev REV\"` adds the code of REV as a baseline).", ""]
    return "\n".join(out)


def render_profile(d: dict) -> list[str]:
    prof = d["profile"]
    names = list(prof)
    lines = ["### Import profile: `import function.func` (exec to the runtime being built)", "",
             f"`python -X importtime -c \"import function.func\"` in functions/generate, warm "
             f"cache, {len(prof['now'])} runs per tree, alternating"
             + (f"; baseline = revision {d['baseline_rev']}" if d.get("baseline_rev") else "")
             + ". Self time by top-level package (import-time instrumentation inflates it).", "",
             "| | " + " | ".join(names) + (" | now / baseline |" if "baseline" in prof else " |"),
             "|---|" + "---|" * (len(names) + ("baseline" in prof))]

    def row(label, f, digits=3):
        vals = [summary([f(r) for r in prof[n]]) for n in names]
        cells = [fmt(v, digits=digits) for v in vals]
        if "baseline" in prof:
            r = vals[0]["median"] / vals[1]["median"] if vals[1]["median"] else None
            cells.append(f"{r:.2f}" if r is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("wall (s)", lambda r: r["wall_s"])
    row("CPU user+sys (s)", lambda r: r["cpu_s"])
    row("modules imported", lambda r: r["modules"], digits=0)
    pkgs: dict[str, float] = {}
    for n in names:
        for r in prof[n]:
            for k, v in r["by_pkg"].items():
                pkgs[k] = max(pkgs.get(k, 0.0), v)
    for pkg in sorted(pkgs, key=pkgs.get, reverse=True)[:16]:
        row(f"`{pkg}` (s)", lambda r, pkg=pkg: r["by_pkg"].get(pkg, 0.0))
    loads = [r["loadavg"] for n in names for r in prof[n]]
    lines += ["", f"Load average during the profile: {min(loads):.2f}-{max(loads):.2f}.", ""]
    return lines


def render_throughput(d: dict) -> list[str]:
    tp = d["throughput"]
    size = d["sizes"]["500 MB"]
    m = {k: summary([r["mb_s"] for r in v])["median"] for k, v in tp.items()}
    lines = ["### Download throughput (500 MB file)", "",
             f"{d['files']['500 MB']} ({size / 1e6:.0f} MB). Capped: through "
             f"scripts/tcp_throttle.py, {d['rate_mb_s']:.0f} MB/s per connection and "
             f"{d['latency_ms']:.0f} ms one way. MB/s = 1e6 bytes/s, end to end (fsync "
             "included).", "",
             "| | MB/s | load avg |", "|---|---|---|"]
    for k, v in tp.items():
        lines.append(f"| {k} | {fmt(summary([r['mb_s'] for r in v]), digits=0)} | "
                     f"{_load_span(v)} |")
    r1 = m["ours"] / m["disk write"]
    r2 = m["ours, capped"] / m["single stream, capped"]
    r3 = m["ours"] / m["single stream"]
    lines += ["",
              f"- ours / disk write, uncapped: **{r1:.2f}** (target >= 0.75: "
              f"{'met' if r1 >= 0.75 else 'missed'});",
              f"- ours / single stream, capped: **{r2:.2f}** (target >= 2: "
              f"{'met' if r2 >= 2 else 'missed'}); uncapped: {r3:.2f}.",
              "- disk write: 1 MiB `write`s of random bytes and one fsync, in the cache "
              "directory's filesystem. ours: `llmfn.weights.fetch` with the default settings "
              "(8 MiB ranges, 8 at once), hashed while downloading, fsync. single stream: one "
              "`get_object` from a `boto3.client('s3')` with boto3's defaults, the body copied "
              "with `shutil.copyfileobj` (64 KiB reads) to a file, fsync (the way KServe's "
              "storage-initializer streams an object).", ""]
    return lines


def render_coldstart(d: dict) -> list[str]:
    lines = ["### Start to ready and to first token", "",
             "Start: the process is spawned. Ready: its readiness URL answers 200 (ours "
             "`/health/readiness`, llama-server `/health`). First token: ready + the first "
             "request's time to first token (SSE, 8 tokens). Phases (ours, from "
             "`llmfn_cold_start_seconds`): import = process start to `ModelHost.start` (the "
             "worker's start under gunicorn); download and verify run on the fetch thread from "
             "the function module's first lines (with an empty cache the imports wait for the "
             "fetch's set-up, then overlap the transfer); verify = the hash tail after the "
             "last byte; fetch wait = how long the host still waited for the file after the "
             "imports; load = llama.cpp load and context, on the preload thread as soon as the "
             "file is verified, overlapping the web stack's imports; load wait = how long the "
             "host still waited for it after the imports.", "",
             "| model | scenario | start to ready (s) | / llama-server | start to first token "
             "(s) | / llama-server | import | download | verify | fetch wait | load | "
             "load wait | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, scen in d["coldstart"].items():
        ref_r = med(scen["llama-server"], "ready")
        ref_f = med(scen["llama-server"], "first_token")
        for name, rows in scen.items():
            r, f = med(rows, "ready"), med(rows, "first_token")
            cells = [fmt(summary([x["ready"] for x in rows])), f"{r / ref_r:.2f}",
                     fmt(summary([x["first_token"] for x in rows])), f"{f / ref_f:.2f}"]
            for p in PHASES:
                v = med(rows, p)
                cells.append(f"{v:.3f}" if v is not None else "-")
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + f" | {_load_span(rows)} |")
    lines.append("")
    for model, scen in d["coldstart"].items():
        rows = scen.get("gunicorn, warm cache", [])
        gaps = [r["ready"] - r["ready_self"] for r in rows if "ready_self" in r]
        if gaps:
            lines.append(f"- {model}, gunicorn, warm cache: the master costs "
                         f"{summary(gaps)['median']:.3f} s before the worker starts (ready seen "
                         "from outside minus the worker's own age when loaded); func-python "
                         "runs one process.")
    tp = d.get("throughput")
    for model, scen in d["coldstart"].items():
        ref_r = med(scen["llama-server"], "ready")
        warm = med(scen["gunicorn, warm cache"], "ready")
        warm_f = med(scen["func-python, warm cache"], "ready")
        txt = (f"- {model}: warm cache, start to ready / llama-server: gunicorn "
               f"**{warm / ref_r:.2f}**, func-python **{warm_f / ref_r:.2f}** (target <= 1.5)")
        lines.append(txt + ".")
        if not tp:
            continue
        for scenario, keys in (("empty cache", ("ours", "single stream")),
                               ("empty cache, capped S3", ("ours, capped",
                                                           "single stream, capped"))):
            if not scen.get(f"gunicorn, {scenario}"):
                continue
            wire = max(summary([r["mb_s"] for r in tp[k]])["median"] for k in keys) * 1e6
            budget = d["sizes"][model] / wire + ref_r
            got = ", ".join(
                f"{kind} **{med(scen[f'{kind}, {scenario}'], 'first_token') / budget:.2f}**"
                for kind in ("gunicorn", "func-python"))
            lines.append(f"- {model}: {scenario}, start to first token / (size at the wire "
                         f"speed {wire / 1e6:.0f} MB/s + llama-server's start to ready = "
                         f"{budget:.2f} s): {got} (target <= 1.2).")
    lines += ["", "Plot: ![cold start](img/bench-coldstart.png)", ""]
    return lines


def render_budget(d: dict) -> str:
    """docs/deploy.md's cold-start budget: phases per model size from this run (func-python,
    what `func deploy` runs), and a 4 GB column extrapolated from the 500 MB one."""
    cs, tp = d["coldstart"], d["throughput"]
    speed = {k: summary([r["mb_s"] for r in tp[k]])["median"] * 1e6
             for k in ("ours", "ours, capped")}
    col: dict[str, dict[str, float]] = {}
    for m in cs:
        warm, empty = cs[m]["func-python, warm cache"], cs[m]["func-python, empty cache"]
        capped = cs[m].get("func-python, empty cache, capped S3") or []
        col[m] = {"import": med(warm, "import"), "verify": med(empty, "verify"),
                  "load": med(warm, "load"), "ready_warm": med(warm, "ready"),
                  "ready_empty": med(empty, "ready"), "ttft": med(warm, "ttft"),
                  "size": float(d["sizes"][m])}
        col[m]["ready_capped"] = (med(capped, "ready") if capped else col[m]["ready_warm"]
                                  + col[m]["size"] / speed["ours, capped"] + col[m]["verify"])
    (_, a), (_, b) = sorted(col.items(), key=lambda kv: kv[1]["size"])[:2]
    slope = max(0.0, (b["load"] - a["load"]) / (b["size"] - a["size"]))
    big = {"import": b["import"], "verify": b["verify"], "ttft": b["ttft"], "size": GB4,
           "load": b["load"] + slope * (GB4 - b["size"])}
    more_load = big["load"] - b["load"]
    big["ready_warm"] = b["ready_warm"] + more_load
    big["ready_empty"] = b["ready_empty"] + (GB4 - b["size"]) / speed["ours"] + more_load
    big["ready_capped"] = (b["ready_capped"] + (GB4 - b["size"]) / speed["ours, capped"]
                           + more_load)
    col["4 GB (extrapolated)"] = big
    for c in col.values():
        c["dl"] = c["size"] / speed["ours"]
        c["dl_capped"] = c["size"] / speed["ours, capped"]
    names = list(col)
    rows = [
        ("Python start and imports (process start to the runtime built)", "import"),
        (f"weight download, loopback MinIO ({speed['ours'] / 1e6:.0f} MB/s)", "dl"),
        (f"weight download, S3 capped at {d['rate_mb_s']:.0f} MB/s per connection "
         f"({speed['ours, capped'] / 1e6:.0f} MB/s with 8 ranges)", "dl_capped"),
        ("sha256 verify (the hash tail after the last byte)", "verify"),
        ("model load (llama.cpp; overlaps the imports)", "load"),
        ("**start to ready, warm cache**", "ready_warm"),
        ("**start to ready, empty cache, loopback MinIO**", "ready_empty"),
        ("**start to ready, empty cache, capped S3**", "ready_capped"),
        ("first request after ready: time to first token", "ttft"),
    ]
    out = [f"Measured by `make bench-coldstart` ({d['machine']}, {d['runs']} runs, medians; "
           "the func-python path, what `func deploy` runs) for SmolLM2-135M Q4_1 and a "
           "synthetic 0.5B Q8_0. The phases overlap (above), so they do not add up to the "
           "start-to-ready rows. The **4 GB column is extrapolated**, not measured: imports, "
           "verify tail and time to first token as for 500 MB, the load linear in size through "
           "the two measured points, and the start-to-ready rows = 500 MB's + the extra bytes "
           "at the measured download speed + the extra load. Seconds.", "",
           "| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in rows:
        out.append(f"| {label} | " + " | ".join(f"{col[n][key]:.2f}" for n in names) + " |")
    return "\n".join(out) + "\n"


def plot(d: dict, out: Path) -> None:
    """Start to ready and to first token (medians), per scenario and model: horizontal bars,
    so every scenario's name reads in full; the title gives the load average of the runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = d["coldstart"]
    fig, axes = plt.subplots(1, len(cs), figsize=(7 * len(cs), 5.5), squeeze=False)
    for ax, (model, scen) in zip(axes[0], cs.items()):
        names = list(scen)[::-1]  # top to bottom in the table's order
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], [med(scen[n], "ready") for n in names], height=0.4,
                label="start to ready")
        ax.barh([i - 0.2 for i in y], [med(scen[n], "first_token") for n in names],
                height=0.4, label="start to first token")
        ax.axvline(med(scen["llama-server"], "ready") * 1.5, color="grey", ls="--", lw=1,
                   label="1.5 x llama-server's start to ready")
        ax.set_yticks(list(y), names, fontsize=9)
        ax.set_xlabel("seconds (median)")
        ax.set_title(f"{model}: {d['files'][model]}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="lower right")
    rows = [r for scen in cs.values() for runs in scen.values() for r in runs]
    fig.suptitle(f"Cold start, {d['runs']} runs per scenario (1-min load average "
                 f"{_load_span(rows)} during the runs)", fontsize=11)
    common.save_figure(fig, out, dpi=90, footer=common.figure_footer(d, "make bench-coldstart"))


if __name__ == "__main__":
    sys.exit(main())
