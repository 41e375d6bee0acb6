#!/usr/bin/env python3
"""`make load PROFILE=load|stress|spike|soak`: locust, headless, against the `make run` stack.

Uses the stack on GENERATE_PORT/EMBED_PORT/AUDIT_PORT (8081-8083) when all three are ready;
otherwise starts scripts/run.py on free ports (MinIO, FerretDB, broker and the three functions,
exactly as `make run`) and stops it afterwards. Then: a warm-up (a few requests per function),
the process samples (RSS, open file descriptors) for soak, locust headless with the profile's
LoadTestShape (load/profiles.py) and the users of load/locustfile.py, writing its CSV stats to
``.state/load/<profile>/``; the table (from locust's stats CSV plus the per-request records for
TTFT and tokens/s), a plot ``docs/img/load-<profile>.png`` and the profile's section of
``docs/load.md`` (between its markers) are written from those.

    .venv/bin/python load/run_load.py --profile load [--no-docs] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from load import profiles
from scripts import procs

ROOT = Path(__file__).resolve().parents[1]

HOST = "127.0.0.1"
DOC = ROOT / "docs" / "load.md"
IMG = ROOT / "docs" / "img"
FUNCTIONS = {"generate": ("GENERATE_PORT", 8081), "embed": ("EMBED_PORT", 8082),
             "audit": ("AUDIT_PORT", 8083)}
READY_DEADLINE_S = 600.0
LOCUST_MARGIN_S = 120.0  # beyond the profile's length: start-up, stop timeout, report


def log(msg: str) -> None:
    print(f"load: {msg}", file=sys.stderr, flush=True)


# -- the stack -------------------------------------------------------------------------------
def ready(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].split(":")
    return procs.http_status(host, int(port), procs.READY_PATH, timeout_s=2.0)[0] == 200


class Stack:
    """The running `make run` stack, or one started here (scripts/run.py on free ports)."""

    def __init__(self, out: Path):
        self.out = out
        self.proc: subprocess.Popen | None = None
        ports = {n: int(os.environ.get(env, default)) for n, (env, default) in FUNCTIONS.items()}
        self.urls = {n: f"http://{HOST}:{p}" for n, p in ports.items()}

    def __enter__(self) -> Stack:
        if all(ready(u) for u in self.urls.values()):
            log(f"using the running stack: {self.urls}")
            return self
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in ("BROKER_PORT", "MINIO_PORT", "FERRETDB_PORT", *(e for e, _ in
                                                                      FUNCTIONS.values())):
            env[name] = str(procs.free_port())
        self.urls = {n: f"http://{HOST}:{env[e]}" for n, (e, _) in FUNCTIONS.items()}
        self.out.mkdir(parents=True, exist_ok=True)
        log(f"starting scripts/run.py on free ports (log {self.out / 'stack.log'})")
        with open(self.out / "stack.log", "ab") as f:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py")],
                                         cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + READY_DEADLINE_S
        while not all(ready(u) for u in self.urls.values()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripts/run.py exited; see {self.out / 'stack.log'}")
            if time.monotonic() > end:
                self.__exit__()
                raise RuntimeError(f"stack not ready after {READY_DEADLINE_S}s")
            time.sleep(1.0)
        log(f"stack ready: {self.urls}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # run.py stops everything in order
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def warm_up(urls: dict[str, str], n: int = 3) -> None:
    """A few requests per function before measuring (first-request allocations)."""
    import requests
    for _ in range(n):
        requests.post(f"{urls['generate']}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16})
        requests.post(f"{urls['embed']}/v1/embeddings", timeout=60, json={"input": ["warm up"]})


# -- process samples (soak) ------------------------------------------------------------------
def listening_pids(port: int) -> list[int]:
    """The processes holding a socket listening on ``port`` (gunicorn: master and worker)."""
    import psutil
    pids = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    pids.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return sorted(pids)


def sample(urls: dict[str, str]) -> dict[str, dict]:
    """Per function: RSS (MiB) and open fds, summed over the processes on its port."""
    import psutil
    out = {}
    for name, url in urls.items():
        rss = fds = 0
        pids = listening_pids(int(url.rsplit(":", 1)[1]))
        for pid in pids:
            try:
                p = psutil.Process(pid)
                rss += p.memory_info().rss
                fds += p.num_fds()
            except psutil.Error:
                pass
        out[name] = {"pids": pids, "rss_mib": round(rss / 2**20, 1), "fds": fds}
    return out


# -- locust -------------------------------------------------------------------------------------
def run_locust(profile: str, urls: dict[str, str], out: Path, *,
               max_tokens: int = 32) -> Path:
    """locust headless with ``profile``'s shape; CSVs and records.jsonl in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("locust_*.csv"):
        old.unlink()
    records = out / "records.jsonl"
    records.unlink(missing_ok=True)
    env = {**os.environ, "LLMFN_LOAD_PROFILE": profile, "LLMFN_LOAD_RECORDS": str(records),
           "LLMFN_MAX_TOKENS": str(max_tokens),
           **{f"LLMFN_{n.upper()}_URL": u for n, u in urls.items()}}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "load" / "locustfile.py"),
           "--headless", "--only-summary", "--csv", str(out / "locust"), "--csv-full-history",
           "--stop-timeout", "30", "--exit-code-on-error", "0", "--loglevel", "WARNING"]
    timeout = profiles.duration_s(profile) + LOCUST_MARGIN_S
    log(f"locust: profile {profile} ({profiles.duration_s(profile):.0f} s)")
    with open(out / "locust.log", "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise RuntimeError(f"locust ran over {timeout}s; see {out / 'locust.log'}") from e
    if rc != 0:
        raise RuntimeError(f"locust exited with {rc}; see {out / 'locust.log'}")
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def summarize(out: Path) -> dict:
    """The table: per request name, locust's stats (attempts) and the logical outcomes."""
    rows = {}
    with open(out / "locust_stats.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["Name"] == "Aggregated":
                continue
            rows[(r["Type"], r["Name"])] = r
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()
            if line.strip()] if (out / "records.jsonl").exists() else []
    table = []
    for (kind, name), r in sorted(rows.items()):
        if kind != "HTTP" or "[retry-after" in name:
            continue
        mine = [x for x in recs if x["name"] == name]
        ttft = [x["ttft_ms"] for x in mine if "ttft_ms" in x]
        tps = [x["tokens_per_s"] for x in mine if "tokens_per_s" in x]
        rejected = sum(int(v["Request Count"]) for (k, n), v in rows.items()
                       if n.startswith(name + " [retry-after"))
        table.append({
            "name": name, "total": len(mine),
            "succeeded": sum(x["outcome"] == "ok" for x in mine),
            "failed": sum(x["outcome"] != "ok" for x in mine),
            "attempts": int(r["Request Count"]), "attempt_failures": int(r["Failure Count"]),
            "retry_after": rejected,
            "avg_ms": float(r["Average Response Time"]), "p90_ms": float(r["90%"]),
            "p95_ms": float(r["95%"]),
            "ttft_avg_ms": statistics.fmean(ttft) if ttft else None,
            "ttft_p95_ms": pct(ttft, 95), "tps_p50": pct(tps, 50),
            "tps_p10": pct(tps, 10)})
    errors: dict[str, int] = {}
    for x in recs:
        if x["outcome"] != "ok":
            errors[x.get("error", "?")[:120]] = errors.get(x.get("error", "?")[:120], 0) + 1
    return {"rows": table, "errors": errors,
            "unexpected_failures": sum(t["failed"] for t in table)}


# -- report -----------------------------------------------------------------------------------
def fmt(v, nd=0) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(profile: str, summary: dict, meta: dict) -> str:
    stages = ", ".join(f"{u} users by {t:.0f} s" for t, u, _ in profiles.PROFILES[profile])
    lines = [f"### {profile}", "",
             f"Stages: {stages}. Taken {meta['date']} on {meta['nproc']} cores "
             f"({meta['cpu']}), load average {meta['loadavg_start']} at the start "
             f"(other jobs were running on the machine), stack: {meta['stack']}.", "",
             "| request | total | succeeded | failed | average ms | p90 ms | p95 ms | "
             "TTFT avg / p95 ms | tokens/s p50 / p10 | 429/503 + Retry-After |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in summary["rows"]:
        ttft = (f"{fmt(t['ttft_avg_ms'])} / {fmt(t['ttft_p95_ms'])}"
                if t["ttft_avg_ms"] is not None else "-")
        tps = (f"{fmt(t['tps_p50'], 1)} / {fmt(t['tps_p10'], 1)}"
               if t["tps_p50"] is not None else "-")
        lines.append(f"| {t['name']} | {t['total']} | {t['succeeded']} | {t['failed']} | "
                     f"{fmt(t['avg_ms'])} | {fmt(t['p90_ms'])} | {fmt(t['p95_ms'])} | {ttft} | "
                     f"{tps} | {t['retry_after']} |")
    lines.append("")
    if summary["errors"]:
        lines += ["Failures: " + "; ".join(f"{n} x {e}" for e, n in summary["errors"].items()),
                  ""]
    if meta.get("samples"):
        s0, s1 = meta["samples"]["start"], meta["samples"]["end"]
        lines += ["| function | RSS start MiB | RSS end MiB | growth "
                  "| fds start | fds end | growth |",
                  "|---|---|---|---|---|---|---|"]
        for name in s0:
            a, b = s0[name], s1[name]
            g_rss = (b["rss_mib"] / a["rss_mib"] - 1) * 100 if a["rss_mib"] else 0.0
            g_fd = (b["fds"] / a["fds"] - 1) * 100 if a["fds"] else 0.0
            lines.append(f"| {name} | {a['rss_mib']} | {b['rss_mib']} | {g_rss:+.1f} % | "
                         f"{a['fds']} | {b['fds']} | {g_fd:+.1f} % |")
        lines.append("")
    lines += [f"![{profile}](img/load-{profile}.png)", ""]
    return "\n".join(lines)


def write_section(profile: str, text: str, doc: Path = DOC) -> None:
    begin, end = f"<!-- load:{profile}:begin -->", f"<!-- load:{profile}:end -->"
    body = doc.read_text()
    if begin not in body:
        raise RuntimeError(f"{doc} has no {begin} marker")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{text}{end}{tail}")


def plot(profile: str, out: Path, path: Path, meta: dict | None = None) -> None:
    """Users; requests/s and failures/s; each request's latency and TTFT, over time (locust's
    history CSV and the records). One quantity per axis, legends beside the axes (never over
    the data), and the run's date, machine and command in the footer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hist = [r for r in csv.DictReader(open(out / "locust_stats_history.csv", newline=""))
            if r["Name"] == "Aggregated"]
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()
            if line.strip()]
    t0 = min([int(r["Timestamp"]) for r in hist] + [x["t"] for x in recs])
    fig, (ax0, ax1, ax2) = plt.subplots(3, 1, figsize=(11, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [1, 1.3, 2.2]})
    ts = [int(r["Timestamp"]) - t0 for r in hist]
    ax0.step(ts, [int(r["User Count"]) for r in hist], where="post", label="users",
             color="black")
    ax0.set_ylabel("users")
    ax0.set_ylim(0, None)
    ax0.set_title(f"make load PROFILE={profile}")
    ax1.plot(ts, [float(r["Requests/s"]) for r in hist], label="requests/s (attempts)")
    ax1.plot(ts, [float(r["Failures/s"]) for r in hist], label="failures/s", color="red")
    ax1.set_ylabel("requests/s")
    ax1.set_ylim(0, None)
    for name in sorted({x["name"] for x in recs}):
        mine = [x for x in recs if x["name"] == name and x["outcome"] == "ok"]
        ax2.scatter([x["t"] - t0 for x in mine], [x["ms"] for x in mine], s=6, label=name)
        if any("ttft_ms" in x for x in mine):
            ax2.scatter([x["t"] - t0 for x in mine if "ttft_ms" in x],
                        [x["ttft_ms"] for x in mine if "ttft_ms" in x], s=6, marker="x",
                        label=f"{name}: TTFT")
    bad = [x for x in recs if x["outcome"] != "ok"]
    if bad:
        ax2.scatter([x["t"] - t0 for x in bad], [x["ms"] for x in bad], s=20, color="black",
                    marker="X", label="failed")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency, ms (log scale)")
    ax2.set_xlabel("seconds since the start")
    for ax in (ax0, ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=2,
                  borderaxespad=0)
    if meta:
        fig.text(0.005, 0.005, f"{meta.get('date', '?')} · {meta.get('cpu', '?')}, "
                 f"{meta.get('nproc', '?')} cores, load average {meta.get('loadavg_start', '?')}"
                 f" at the start · make load PROFILE={profile}", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine(stack: str) -> dict:
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(), "cpu": cpu,
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "stack": stack}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=sorted(profiles.PROFILES))
    ap.add_argument("--out", type=Path, default=None, help="default .state/load/<profile>")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the table, plot and docs section from the last run's files")
    args = ap.parse_args()
    out = args.out or ROOT / ".state" / "load" / args.profile
    if args.report_only:
        meta = json.loads((out / "summary.json").read_text())["meta"]
        return report(args.profile, out, meta, docs=not args.no_docs)
    with Stack(out) as stack:
        meta = machine("started by load/run_load.py (scripts/run.py on free ports)"
                       if stack.proc else "the running `make run`")
        warm_up(stack.urls)
        if args.profile == "soak":
            meta["samples"] = {"start": sample(stack.urls)}
        run_locust(args.profile, stack.urls, out, max_tokens=args.max_tokens)
        if args.profile == "soak":
            meta["samples"]["end"] = sample(stack.urls)
    return report(args.profile, out, meta, docs=not args.no_docs)


def report(profile: str, out: Path, meta: dict, *, docs: bool) -> int:
    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps({"meta": meta, **summary}, indent=2))
    text = markdown(profile, summary, meta)
    print(text)
    if docs:
        plot(profile, out, IMG / f"load-{profile}.png", meta)
        write_section(profile, text)
        log(f"wrote docs/load.md ({profile}) and docs/img/load-{profile}.png")
    return 0 if summary["unexpected_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
