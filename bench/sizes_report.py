"""bench_sizes.py's report: figures per size, the extrapolation of what was not measured (and its
check on qwen2.5-3b), the run-time estimate, the table, the plot, and the measured columns of
deploy/examples/sizing.json (docs/deploy.md "Sizing" through scripts/sizing_table.py).

Extrapolation: each figure y is fitted as a power law of the model file's bytes over the fully
measured sizes (least squares on log y against log bytes). Where the unmeasured size has an
anchor figure measured (decode tokens/s at the main threads for throughputs, our load time for
cold starts), the fitted quantity is y / anchor, so the prediction keeps the size's own
measurement; TTFT has no anchor. The check predicts qwen2.5-3b from the sizes below it and
reports the error of each figure against what was measured.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from bench import common
from bench.common import log

OURS, LLAMA = "ours", "llama-server"
TABLE = common.REPO_ROOT / "deploy" / "examples" / "sizing.json"
DEPLOY_DOC = common.REPO_ROOT / "docs" / "deploy.md"
PLOT = common.REPO_ROOT / "docs" / "img" / "bench-sizes.png"
CHECK = "qwen2.5-3b"
MIB = 1024 * 1024
GIB = 1024 * MIB


def kv_per_token(name: str, file_bytes: int) -> int:
    """K and V bytes of one token (f16), from the shape: llmfn.sizing's formula."""
    from scripts.sizing_table import model_shape
    return model_shape(name, file_bytes).kv_bytes_per_token()


def _med(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def figures(res: dict) -> dict[str, float | None]:
    """One size's scalar figures (medians) from its raw results."""
    f: dict[str, float | None] = {"file_bytes": res["file_bytes"],
                                  "kv_bytes_per_token": res["kv_bytes_per_token"],
                                  "kv_bytes_per_token_log": res.get("kv_bytes_per_token_log")}
    main = res["threads"].get(str(res["threads_main"]), {})
    for t, r in res["threads"].items():
        for srv in (OURS, LLAMA):
            f[f"decode_{t}t_{srv}"] = _med(r[srv]["decode_tps"])
    for srv in (OURS, LLAMA):
        if not main:
            break
        f[f"load_{srv}"] = main[srv]["load_s"]
        f[f"rss_{srv}"] = (main[srv]["mem_after_runs"]["rss_kb"] or 0) / 1024
        f[f"hwm_{srv}"] = (main[srv]["mem_after_runs"]["hwm_kb"] or 0) / 1024
        f[f"ttft_{srv}"] = _med(main[srv]["ttft_s"])
        f["prompt_tokens"] = main.get("prompt_tokens")
        for n, v in main[srv]["aggregate_tps"].items():
            f[f"agg_{n}_{srv}"] = _med(v)
    f["decode_main_ours"] = f.get(f"decode_{res['threads_main']}t_{OURS}")
    for kind in ("empty", "warm"):
        runs = res.get("cold", {}).get(kind, [])
        f[f"cold_{kind}"] = _med([r["first_token"] for r in runs])
    return f


def anchor_of(key: str) -> str | None:
    if key.startswith("agg_"):
        return "decode_main_ours"
    if key.startswith("cold_"):
        return f"load_{OURS}"
    return None


def predict(key: str, target: dict, known: list[dict]) -> float | None:
    """``key`` for ``target`` from ``known`` sizes (a power law of file bytes; see above)."""
    anchor = anchor_of(key)
    pts = []
    for k in known:
        y = k.get(key)
        a = k.get(anchor) if anchor else 1.0
        if y and a:
            pts.append((math.log(k["file_bytes"]), math.log(y / a)))
    base = target.get(anchor) if anchor else 1.0
    if not pts or not base:
        return None
    if len(pts) == 1:
        slope, icept = 0.0, pts[0][1]
    else:
        mx = statistics.fmean(x for x, _ in pts)
        my = statistics.fmean(y for _, y in pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
        icept = my - slope * mx
    return base * math.exp(icept + slope * math.log(target["file_bytes"]))


EXTRAPOLATED = ("agg_1", "agg_4", "agg_8", "ttft", "cold_empty", "cold_warm")


def fill(figs: dict[str, dict], results: dict) -> dict:
    """Extrapolate the figures the partial sizes lack; the check on qwen2.5-3b."""
    full = {n: f for n, f in figs.items() if results[n]["full"]}
    keys = [k for f in full.values() for k in f if k.startswith(EXTRAPOLATED)]
    keys = list(dict.fromkeys(keys))
    out = {"method": "power law of file bytes over the fully measured sizes "
                     "(throughputs relative to decode at the main threads, cold starts to our "
                     "load time)", "extrapolated": {}, "check": {}}
    for name, f in figs.items():
        if results[name]["full"]:
            continue
        for k in keys:
            if f.get(k) is None:
                f[k] = predict(k, f, list(full.values()))
                out["extrapolated"].setdefault(name, []).append(k)
    if CHECK in full:
        smaller = [f for n, f in full.items() if f["file_bytes"] < full[CHECK]["file_bytes"]]
        for k in keys:
            p = predict(k, full[CHECK], smaller) if smaller else None
            m = full[CHECK].get(k)
            if p is not None and m:
                out["check"][k] = {"predicted": p, "measured": m, "error": p / m - 1}
    return out


# -- run time -------------------------------------------------------------------------------------
def estimate_s(figs: dict[str, dict], results: dict, table: dict, *, rounds: int = 3,
               max_tokens: int = 64, streams=(1, 4, 8), cold_runs: int = 2,
               rate_mb_s: float = 40.0) -> dict[str, float] | None:
    """Seconds a default run would take per size, scaled from the largest fully measured size
    (the nearest to the big ones; decode, aggregate, prefill and load times in proportion to
    file bytes)."""
    ref_name = max((n for n in figs if results[n]["full"]), default=None,
                   key=lambda n: figs[n]["file_bytes"])
    if ref_name is None:
        return None
    r, res = figs[ref_name], results[ref_name]
    made_rate = res["file_bytes"] / res["file_made_s"] if res["file_made_s"] > 1 else 150e6
    out = {}
    for name, row in table["models"].items():
        k = row["file_bytes"] / r["file_bytes"]
        s = row["file_bytes"] / made_rate
        for srv in (OURS, LLAMA):
            for t in res["threads"]:
                s += k * (r[f"load_{srv}"] + rounds * max_tokens / r[f"decode_{t}t_{srv}"])
            if name == "llama-3.1-8b":
                continue
            s += (rounds + 2) * k * r[f"ttft_{srv}"]
            s += sum(rounds * n * max_tokens * k / r[f"agg_{n}_{srv}"] for n in streams)
        if name != "llama-3.1-8b":
            s += 2 * row["file_bytes"] / 100e6  # sha256 and upload to MinIO
            s += cold_runs * (row["file_bytes"] / (rate_mb_s * 1e6) + 2 * k * r[f"load_{OURS}"])
        out[name] = s
    out["total"] = sum(out.values())
    return out


# -- table, plot, docs ----------------------------------------------------------------------------
def _n(v: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def _r(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def _row(name: str, f: dict, x: set, d: dict) -> str:
    """One size's line of the table (``x``: its extrapolated figures, shown ``~v*``)."""

    def v(key: str, digits: int = 1) -> str:
        s = _n(f.get(key), digits)
        return f"~{s}*" if key in x and f.get(key) is not None else s

    def dec(t: str) -> str:
        a, b = f.get(f"decode_{t}t_{OURS}"), f.get(f"decode_{t}t_{LLAMA}")
        return f"{_n(a)} / {_n(b)} ({_r(a, b)})"

    ns = [str(n) for n in d["streams"]]
    res = d["results"][name]
    return (
        f"| {name} | {f['file_bytes'] / MIB:,.0f} MiB | {res['threads_main']} "
        f"| {dec('1')} | {dec('2')} "
        f"| {' / '.join(v(f'agg_{n}_{OURS}') for n in ns)} "
        f"| {' / '.join(v(f'agg_{n}_{LLAMA}') for n in ns)} "
        f"| {' / '.join(_r(f.get(f'agg_{n}_{OURS}'), f.get(f'agg_{n}_{LLAMA}')) for n in ns)} "
        f"| {v(f'ttft_{OURS}', 2)} / {v(f'ttft_{LLAMA}', 2)} "
        f"[{_n(f.get('prompt_tokens'), 0)}] "
        f"({_r(f.get(f'ttft_{OURS}'), f.get(f'ttft_{LLAMA}'))}) "
        f"| {_n(f.get(f'rss_{OURS}'), 0)} / {_n(f.get(f'rss_{LLAMA}'), 0)} "
        f"| {f['kv_bytes_per_token']:,} ({_n(f.get('kv_bytes_per_token_log'), 0)}) "
        f"| {_n(f.get(f'load_{OURS}'), 2)} / {_n(f.get(f'load_{LLAMA}'), 2)} "
        f"| {v('cold_empty')} / {v('cold_warm')} | {res['date']}, load "
        f"{res['load_start'][0]:.1f}-{res['load_end'][0]:.1f}"
        f"{' (partial)' if not res['full'] else ''} |")


def est_ref(d: dict) -> str:
    full = [n for n, r in d["results"].items() if r["full"]]
    return max(full, key=lambda n: d["results"][n]["file_bytes"]) if full else "n/a"


def _short_prompt(d: dict) -> str:
    n = [r.get("short_prompt_tokens") for res in d["results"].values()
         for r in res["threads"].values()]
    return "/".join(str(x) for x in dict.fromkeys(n) if x) or "n/a"


def render(d: dict) -> str:
    figs, ext = d["figures"], d["extrapolation"]
    rows = ["| model | file | threads | decode tok/s 1 thr, ours / llama-server (ratio) "
            "| decode 2 thr | aggregate 1 / 4 / 8 streams, ours | llama-server | ratios "
            "| TTFT ~1k prompt (s), ours / llama-server (ratio) [its tokens] "
            "| RSS MiB, ours / llama-server | KV bytes/token (log) "
            "| load s, ours / llama-server | cold start s, empty (capped) / warm "
            "| measured (UTC, 1-min load average at start-end) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in figs.items():
        rows.append(_row(name, f, set(ext["extrapolated"].get(name, [])), d))
    check = [f"{k} {c['error'] * 100:+.0f} %" for k, c in ext["check"].items()]
    not_run = [n for n in json.loads(TABLE.read_text())["models"] if n not in figs]
    est = d.get("estimate_s")
    return "\n".join([
        "## Model sizes: our function vs llama-server, 0.5B to 8B shapes",
        "",
        f"Machine: {d['machine']}, shared with other jobs. Synthetic GGUFs with the shapes of the "
        f"real models (scripts/make_synthetic_gguf.py, {d['quant'].upper()}, random weights), "
        f"N_CTX {d['n_ctx']} per slot. Ours: generate under gunicorn with deploy/generate.yaml's "
        "env as the example overlay sizes it (SLOTS, QUEUE_SIZE, flash attention on, "
        f"{d.get('thread_policy', 'OMP_WAIT_POLICY=passive')}), only N_THREADS changed; "
        "llama-server: `-np 8 -kvu -t N "
        "-c SLOTS*N_CTX --kv-unified-per-slot N_CTX -fa on`, the same file. "
        f"{d['rounds']} rounds per figure, servers alternated, greedy with `ignore_eos`, "
        f"{d['max_tokens']} completion tokens per stream after a prompt of about "
        f"{_short_prompt(d)} tokens; medians. Aggregate, TTFT, RSS (of the "
        "model process after the runs), load and cold starts at the example's threads capped "
        "at nproc (column threads). Cold start: ours from MinIO to first token, empty cache "
        f"through scripts/tcp_throttle.py ({d['rate_mb_s']:.0f} MB/s per connection, "
        f"{d['latency_ms']:.0f} ms) and warm cache. KV bytes/token: the shape's formula "
        "(llama-server's `llama_kv_cache` line in brackets). Ratios: ours / llama-server.",
        "",
        *rows,
        "",
        "`~x*`: extrapolated, not measured (" + ext["method"] + "). Check of the method, "
        f"{CHECK} predicted from the smaller sizes: "
        + (", ".join(check) if check else f"not run ({CHECK} not measured yet)") + ".",
        "",
        "Not measured yet: " + (", ".join(not_run) if not_run else "none") + ". "
        + (f"Estimated time of the default run (all four sizes, {3} rounds, 64 tokens): "
           f"{est['total'] / 3600:.1f} h (" + ", ".join(
               f"{n} {s / 60:.0f} min" for n, s in est.items() if n != "total") + "), "
           f"scaled from {est_ref(d)} (its run's load included)." if est else ""),
        "",
        "![decode, aggregate, TTFT and RSS against model size](img/bench-sizes.png)",
        "",
        f"Reproduce: `make bench-sizes` (`bench/bench_sizes.py`; `BENCH_ARGS=\"--sizes "
        f"qwen2.5-0.5b --quick\"` for a reduced run). This run: `{d['command']}`.",
    ])


def plot(d: dict, out: Path) -> None:
    """Decode at 1 and 2 threads, aggregate at N streams, TTFT and RSS against file size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figs, ext = d["figures"], d["extrapolation"]["extrapolated"]
    names = sorted(figs, key=lambda n: figs[n]["file_bytes"])
    xs = [figs[n]["file_bytes"] / GIB for n in names]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [(axes[0][0], "single-stream decode tok/s", [("decode_1t", "1 thr"),
                                                          ("decode_2t", "2 thr")]),
              (axes[0][1], "aggregate tok/s (main threads)",
               [(f"agg_{n}", f"{n} streams") for n in d["streams"]]),
              (axes[1][0], "TTFT, ~1,000-token prompt (s)", [("ttft", "")]),
              (axes[1][1], "RSS after the runs (MiB)", [("rss", "")])]
    for ax, title, series in panels:
        for i, (key, label) in enumerate(series):
            for srv, style in ((OURS, "-o"), (LLAMA, "--s")):
                k = f"{key}_{srv}"
                ys = [figs[n].get(k) for n in names]
                line, = ax.plot(xs, ys, style, color=f"C{i}", label=f"{srv} {label}".strip())
                ex = [(x, y) for n, x, y in zip(names, xs, ys) if k in ext.get(n, []) and y]
                if ex:
                    ax.plot(*zip(*ex), "o", mfc="white", color=line.get_color())
        ax.set(title=title, xlabel="model file (GiB)", xscale="log", yscale="log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"model sizes ({', '.join(names)}), {d['quant'].upper()}; hollow: extrapolated",
                 fontsize=10)
    common.save_figure(fig, out, footer=common.figure_footer(d, d["command"]))


def pod_row(name: str, f: dict, row: dict, res: dict, price: dict, extrapolated: list) -> dict:
    """The measured columns of ``name``'s sizing.json row: per pod at the measured threads."""
    slots = str(row["slots"])
    agg = f.get(f"agg_{slots}_{OURS}")
    mem_gib = int(row["memory"][:-2]) / (1024 if row["memory"].endswith("Mi") else 1)
    threads = res["threads_main"]
    hourly = threads * price["vcpu_hour"] + mem_gib * price["gib_hour"]

    def rnd(v: float | None, digits: int = 1) -> float | None:
        return None if v is None else round(v, digits)

    return {"decode_tokens_per_s": rnd(f.get("decode_main_ours")),
            "aggregate_tokens_per_s": rnd(agg), "cold_start_s": rnd(f.get("cold_empty")),
            "warm_start_s": rnd(f.get("cold_warm")), "threads": threads,
            "cost_per_million_tokens": rnd(hourly / (agg * 3600) * 1e6, 2) if agg else None,
            "extrapolated": [k for k in ("aggregate_tokens_per_s", "cold_start_s",
                                         "warm_start_s", "cost_per_million_tokens")
                             if {"aggregate_tokens_per_s": f"agg_{slots}_{OURS}",
                                 "cost_per_million_tokens": f"agg_{slots}_{OURS}",
                                 "cold_start_s": "cold_empty",
                                 "warm_start_s": "cold_warm"}[k] in extrapolated],
            "date": res["date"]}


def finish(data: dict, table: dict, *, no_doc: bool) -> None:
    """Merge with earlier sizes of .state/bench/sizes.json, extrapolate, estimate, publish."""
    prev_path = common.STATE / "bench" / "sizes.json"
    for res in data["results"].values():
        res["date"] = data["date"]
    if prev_path.exists() and not no_doc:
        prev = json.loads(prev_path.read_text()).get("results", {})
        data["results"] = {**{n: r for n, r in prev.items() if n not in data["results"]},
                           **data["results"]}
    order = list(table["models"])
    data["results"] = dict(sorted(data["results"].items(), key=lambda kv: order.index(kv[0])))
    figs = {n: figures(r) for n, r in data["results"].items()}
    data["extrapolation"] = fill(figs, data["results"])
    data["figures"] = figs
    data["estimate_s"] = estimate_s(figs, data["results"], table)
    plot(data, common.STATE / "bench" / "sizes-scratch.png" if no_doc else PLOT)
    common.publish("sizes", data, render, no_doc=no_doc)
    if no_doc:
        return
    for name in data["results"]:
        table["models"][name]["measured"] = pod_row(
            name, figs[name], table["models"][name], data["results"][name], table["price"],
            data["extrapolation"]["extrapolated"].get(name, []))
    from scripts import sizing_table
    old = sizing_table.table()  # what docs/deploy.md holds (tests/test_manifests_examples.py)
    TABLE.write_text(_dump_table(table))
    text = DEPLOY_DOC.read_text()
    if old not in text:
        raise SystemExit("docs/deploy.md's sizing table is stale: not rewritten")
    DEPLOY_DOC.write_text(text.replace(old, sizing_table.table(table)))
    log(f"wrote {TABLE} and docs/deploy.md's sizing table")


def _dump_table(table: dict) -> str:
    """sizing.json as it is laid out by hand: one line per key, a model's fields packed."""
    lines = ["{"]
    top = [k for k in table if k != "models"]
    for k in top:
        lines.append(f"  {json.dumps(k)}: {json.dumps(table[k])},")
    lines.append('  "models": {')
    names = list(table["models"])
    for i, name in enumerate(names):
        sep = "," if i < len(names) - 1 else ""
        row = dict(table["models"][name])
        measured = row.pop("measured")
        lines.append(f"    {json.dumps(name)}: {json.dumps(row)[:-1]},\n"
                     f"      \"measured\": {json.dumps(measured)}}}{sep}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
