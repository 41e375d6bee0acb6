#!/usr/bin/env python3
"""Structured outputs' speed (issue 22): constrained vs unconstrained on generate, and
generate's ``json_schema`` vs llama-server's, side by side in one run; compile time across the
JSONSchemaBench sample.

Both servers start once with 4 slots on SmolLM2-135M-Instruct Q4_1 (same context per slot,
threads, batch and flash-attention setting; llama-server built from the llama.cpp source that
llama-cpp-python vendors). Schemas: ``--schemas`` from the sample, taken round-robin across
twelve datasets in file order, keeping those both servers accept (a probe request each).
Prompt: "Answer with one JSON document that follows this JSON schema: <the schema>" (the
schema's JSON cut at 600 characters), greedy, ``--max-tokens`` per answer, chat SSE.

Modes: generate unconstrained, generate ``json_schema``, llama-server ``json_schema``
(llama-server unconstrained too, as a reference). A round is one request per schema at 1
stream, then bursts of 4 streams released together (4 different schemas); modes alternate
order each round. Per mode and stream count: decode tok/s of each stream (tokens after the
first / time from first to last text chunk; median over streams), and at 4 streams the
aggregate tok/s of a burst (all tokens / wall time; median over bursts).

Targets: generate constrained >= 0.90 x generate unconstrained (at 1 and 4 streams);
generate json_schema >= 1.0 x llama-server json_schema.

Paired arms (``--pairs``, generate only, before the modes above): generate ``json_schema``
(A) and the same prompts unconstrained (B) with the same number of generated tokens: a
calibration pass runs A with ``--max-tokens`` and keeps each schema's answer length n; then
both arms ask for ``max_tokens`` n with every end-of-generation token banned by ``logit_bias``
-100 (in both arms, so the sampler chains are the same; the grammar alone ends A), so B runs
exactly n tokens as A does (the token counts are reported). Each request (1 stream) and each
burst of 4 of one arm runs right beside the same one of the other arm, in the order A B, then
B A, and so on (a shared machine's load changes over seconds: both arms see it alike); per
round and arm: decode tok/s per stream at 1 stream (median), the aggregate of
4 streams (all tokens / burst wall time), and tokens per CPU-second of generate's processes
(gunicorn master and worker: utime + stime from /proc around the arm), which a shared
machine's other load does not change as much as wall time. Reported: the median B/A ratio over
rounds and its range.

Compile time: generate's own compile (function/constraint.py ``compile_matcher`` with the
llama.cpp vocabulary; before that integration, the GBNF converter of structured.py) over every
schema of the sample, in this process; refusals are counted apart.

    .venv/bin/python bench/bench_structured.py [--schemas 8] [--rounds 2] [--max-tokens 96]
        [--no-doc]

Writes .state/bench/structured.json, docs/img/bench-structured.png and the
"structured-speed" section of docs/structured.md (--no-doc: -scratch JSON, PNG in .state/bench/).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import common
from bench.common import log, percentile
from bench.structured_engines import SAMPLE, load_sample
from scripts.packages import load_package

DOC = common.REPO_ROOT / "docs" / "structured.md"
PLOT = common.REPO_ROOT / "docs" / "img" / "bench-structured.png"
PLOT_SCRATCH = common.STATE / "bench" / "structured-scratch.png"
OURS_FREE, OURS_JSON, LLAMA_JSON, LLAMA_FREE = ("generate", "generate json_schema",
                                                "llama-server json_schema", "llama-server")
MODES = (OURS_FREE, OURS_JSON, LLAMA_JSON, LLAMA_FREE)
SLOTS = 4


def prompt(schema) -> list[dict]:
    text = json.dumps(schema, ensure_ascii=False)[:600]
    return [{"role": "user", "content": "Answer with one JSON document that follows this JSON "
                                        f"schema:\n{text}"}]


def body(schema, *, constrained: bool, max_tokens: int, stream: bool = True,
         ban: list[int] | None = None) -> dict:
    b = {"messages": prompt(schema), "max_tokens": max_tokens, "temperature": 0, "seed": 42,
         "stream": stream}
    if stream:
        b["stream_options"] = {"include_usage": True}
    if ban:
        b["logit_bias"] = {str(t): -100 for t in ban}
    if constrained:
        b["response_format"] = {"type": "json_schema",
                                "json_schema": {"name": "answer", "schema": schema}}
    return b


def post_chat(port: int, payload: dict, *, timeout_s: float = 300.0) -> tuple[int, common.Timing]:
    """POST /v1/chat/completions (SSE or JSON); status and timing (text from the deltas)."""
    conn = http.client.HTTPConnection(common.HOST, port, timeout=timeout_s)
    t = common.Timing()
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200 or not payload.get("stream"):
            data = resp.read()
            t.total_s = time.perf_counter() - t0
            if resp.status == 200:
                doc = json.loads(data)
                t.text = doc["choices"][0]["message"].get("content") or ""
                t.completion_tokens = doc["usage"]["completion_tokens"]
            else:
                t.text = data[:300].decode("utf-8", "replace")
            return resp.status, t
        parts = []
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            now = time.perf_counter() - t0
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    t.chunks += 1
                    t.chunk_s.append(now)
                    parts.append(text)
                    if t.ttft_s is None:
                        t.ttft_s = now
                    t.last_token_s = now
            if event.get("usage"):
                t.completion_tokens = event["usage"]["completion_tokens"]
        t.total_s = time.perf_counter() - t0
        t.text = "".join(parts)
        return 200, t
    finally:
        conn.close()


# Datasets the schemas are taken from, in turn (real-world JSON documents first, then
# function-call arguments).
DATASETS = ("Glaiveai2K", "Github_easy", "Kubernetes", "WashingtonPost", "Snowplow",
            "Github_medium", "JsonSchemaStore", "BFCL_simple", "MCPspec", "Github_trivial",
            "Github_hard", "BFCL_multiple")


def pick_schemas(sample: list[dict], ports: dict[str, int], n: int) -> list[dict]:
    """Round-robin over :data:`DATASETS` in file order; kept when both servers accept the
    schema."""
    by_ds: dict[str, list[dict]] = {}
    for e in sample:
        if isinstance(e["schema"], dict) and e["dataset"] in DATASETS:
            by_ds.setdefault(e["dataset"], []).append(e)
    order = [e for row in zip(*[by_ds[d][:10] for d in DATASETS]) for e in row]
    picked, tried = [], 0
    for e in order:
        if len(picked) >= n or tried >= 120:
            break
        tried += 1
        ok = all(post_chat(ports[m], body(e["schema"], constrained=True, max_tokens=2,
                                          stream=False), timeout_s=60)[0] == 200
                 for m in (OURS_JSON, LLAMA_JSON))
        if ok:
            picked.append(e)
    log(f"schemas: {len(picked)} of {tried} tried accepted by both: "
        + ", ".join(f"{e['dataset']}/{e['name']}" for e in picked))
    return picked


def burst(port: int, payloads: list[dict]) -> dict:
    gate = threading.Barrier(len(payloads))

    def one(p):
        gate.wait(timeout=60)
        sent = time.perf_counter()
        status, t = post_chat(port, p, timeout_s=600)
        if status != 200:
            raise SystemExit(f"port {port}: HTTP {status}: {t.text}")
        return sent, t

    with ThreadPoolExecutor(len(payloads)) as pool:
        done = [f.result(timeout=900) for f in [pool.submit(one, p) for p in payloads]]
    wall = max(s + t.total_s for s, t in done) - min(s for s, _ in done)
    spans = [(s + t.ttft_s, s + t.last_token_s) for s, t in done if t.ttft_s is not None]
    decode_wall = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0
    return {"wall_s": wall, "tokens": [t.completion_tokens for _, t in done],
            "decode_wall_s": decode_wall,
            "decode_tps": [t.decode_tps for _, t in done], "texts": [t.text for _, t in done]}


def measure(ports: dict[str, int], schemas: list[dict], args) -> dict:
    res = {m: {"1": [], "4": []} for m in MODES}
    for r in range(args.rounds):
        order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
        for mode in order:
            constrained = "json_schema" in mode
            payloads = [body(e["schema"], constrained=constrained, max_tokens=args.max_tokens)
                        for e in schemas]
            for p in payloads:
                res[mode]["1"].append(burst(ports[mode], [p]))
            for k in range(0, len(payloads) - SLOTS + 1, SLOTS):
                res[mode]["4"].append(burst(ports[mode], payloads[k:k + SLOTS]))
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{m} {_median(_streams(res[m]['1'])):.1f} tok/s" for m in MODES))
    return res


def _streams(bursts: list[dict]) -> list[float]:
    return [x for b in bursts for x in b["decode_tps"] if x is not None]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def figures(res: dict) -> dict:
    out = {}
    for mode, per_n in res.items():
        out[mode] = {}
        for n, bursts in per_n.items():
            f = {"stream_tps": _median(_streams(bursts)),
                 "tokens_mean": statistics.mean(x for b in bursts for x in b["tokens"])
                 if bursts else float("nan")}
            if n == "4":
                f["aggregate_tps"] = _median([sum(b["tokens"]) / b["wall_s"] for b in bursts])
            out[mode][n] = f
    return out


# -- paired arms: same prompts, same token counts, CPU-seconds -----------------------------------
def eog_tokens() -> list[int]:
    """SmolLM2's end-of-generation token ids (banned in the paired arms)."""
    import llama_cpp as L  # noqa: PLC0415

    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(str(common.smollm2_path()).encode(), params)
    vocab = L.llama_model_get_vocab(model)
    out = [t for t in range(L.llama_vocab_n_tokens(vocab)) if L.llama_vocab_is_eog(vocab, t)]
    L.llama_model_free(model)
    return out


def cpu_s(pid: int) -> float:
    """utime + stime (s) of ``pid`` and its descendants (gunicorn's master and worker)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


PAIR_A, PAIR_B = "json_schema", "unconstrained"


def paired(port: int, pid: int, schemas: list[dict], args) -> dict:
    ban = eog_tokens()
    lengths = []
    for e in schemas:  # calibration (and compile-cache warm-up), not measured
        status, t = post_chat(port, body(e["schema"], constrained=True,
                                         max_tokens=args.max_tokens, ban=ban))
        if status != 200:
            raise SystemExit(f"calibration: HTTP {status}: {t.text}")
        lengths.append(max(2, t.completion_tokens))
    log(f"paired arms: answer lengths {lengths}, end-of-generation tokens {ban} banned")
    by_place = {"first": [], "second": []}  # decode tok/s at 1 stream by place in its pair

    def run(x: dict, arm: str, group: list, n: int, place: str) -> None:
        payloads = [body(e["schema"], constrained=arm == PAIR_A, max_tokens=k, ban=ban)
                    for e, k in group]
        c0, w0 = cpu_s(pid), time.perf_counter()
        b = burst(port, payloads)
        c1, w1 = cpu_s(pid), time.perf_counter()
        x[f"tokens_{n}"] += sum(b["tokens"])
        x[f"wall_{n}"] += w1 - w0
        x[f"cpu_{n}"] += c1 - c0
        x[f"tps_{n}"] += [v for v in b["decode_tps"] if v is not None]
        if n == 1:
            by_place[place] += [v for v in b["decode_tps"] if v is not None]
        x[f"decode_tokens_{n}"] += sum(t - 1 for t in b["tokens"] if t > 1)
        x[f"decode_wall_{n}"] += b["decode_wall_s"]

    rounds = []
    for r in range(args.pairs):
        row = {arm: {f"{k}_{n}": 0 for k in ("tokens", "wall", "cpu", "decode_tokens",
                                            "decode_wall") for n in (1, 4)}
               for arm in (PAIR_A, PAIR_B)}
        for x in row.values():
            x.update(tps_1=[], tps_4=[])

        pairs_1 = [[(e, n)] for e, n in zip(schemas, lengths)]
        pairs_4 = [list(zip(schemas, lengths))[k:k + SLOTS]
                   for k in range(0, len(schemas) - SLOTS + 1, SLOTS)]
        for k, group in enumerate(pairs_1 + pairs_4):  # A B, then B A: same load for both
            arms = (PAIR_A, PAIR_B) if (r + k) % 2 == 0 else (PAIR_B, PAIR_A)
            for arm, place in zip(arms, ("first", "second")):
                run(row[arm], arm, group, len(group), place)
        for x in row.values():
            x.update({"stream_tps_1": _median(x.pop("tps_1")),
                      "wall_tps_1": x["tokens_1"] / x["wall_1"],
                      "cpu_tps_1": x["tokens_1"] / max(x["cpu_1"], 1e-9),
                      "stream_tps_4": _median(x.pop("tps_4")),
                      "aggregate_tps_4": x["tokens_4"] / x["wall_4"],
                      "aggregate_decode_tps_4": x["decode_tokens_4"] / x["decode_wall_4"],
                      "cpu_tps_4": x["tokens_4"] / max(x["cpu_4"], 1e-9)})
        rounds.append(row)
        a, b = row[PAIR_A], row[PAIR_B]
        log(f"pair round {r + 1}/{args.pairs}, json_schema vs unconstrained: 1 stream "
            f"{a['stream_tps_1']:.1f} vs {b['stream_tps_1']:.1f} tok/s, "
            f"{a['cpu_tps_1']:.1f} vs {b['cpu_tps_1']:.1f} tok/cpu-s; 4 streams aggregate "
            f"{a['aggregate_tps_4']:.1f} vs {b['aggregate_tps_4']:.1f} tok/s, "
            f"{a['cpu_tps_4']:.1f} vs {b['cpu_tps_4']:.1f} tok/cpu-s; tokens {a['tokens_1']}/"
            f"{b['tokens_1']}, {a['tokens_4']}/{b['tokens_4']}")
    ratios = {}
    for key in PAIR_LABELS:
        xs = [r[PAIR_A][key] / r[PAIR_B][key] for r in rounds]
        ratios[key] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                       "rounds": xs}
    log("1 stream decode tok/s by place in the pair (both arms): first "
        f"{_median(by_place['first']):.1f}, second {_median(by_place['second']):.1f}")
    return {"lengths": lengths, "banned": ban, "rounds": rounds, "ratios": ratios,
            "by_place": {k: _median(v) for k, v in by_place.items()}}


PAIR_LABELS = {"stream_tps_1": "1 stream, decode tok/s",
               "wall_tps_1": "1 stream, tokens / wall time of the requests",
               "cpu_tps_1": "1 stream, tokens per CPU-second of generate",
               "stream_tps_4": "4 streams, decode tok/s per stream",
               "aggregate_tps_4": "4 streams, aggregate tok/s (tokens / burst wall time)",
               "aggregate_decode_tps_4": "4 streams, aggregate decode tok/s (tokens after "
                                         "the first / first to last token of the burst)",
               "cpu_tps_4": "4 streams, tokens per CPU-second of generate"}


def render_pairs(p: dict) -> list[str]:
    rows = ["| json_schema / unconstrained, same prompts and token counts | median | range "
            "(rounds) | json_schema | unconstrained (medians) |", "|---|---:|---:|---:|---:|"]
    for key, label in PAIR_LABELS.items():
        r = p["ratios"][key]
        a = statistics.median(x[PAIR_A][key] for x in p["rounds"])
        b = statistics.median(x[PAIR_B][key] for x in p["rounds"])
        rows.append(f"| {label} | {r['median']:.2f} x | {r['min']:.2f}-{r['max']:.2f} x | "
                    f"{a:.1f} | {b:.1f} |")
    toks = p["rounds"][0]
    return [f"Paired arms ({len(p['rounds'])} rounds; each request and burst of one arm "
            "beside the same of the other, alternating which goes first; end-of-generation "
            "tokens banned in both, max_tokens = the json_schema "
            f"answer's length per schema, {sum(p['lengths'])} tokens per arm at 1 stream: "
            f"json_schema {toks[PAIR_A]['tokens_1']}, unconstrained {toks[PAIR_B]['tokens_1']} "
            f"in round 1; at 4 streams {toks[PAIR_A]['tokens_4']} and "
            f"{toks[PAIR_B]['tokens_4']}):", "", *rows]


# -- compile time across the sample ---------------------------------------------------------------
def compile_times(sample: list[dict], budget_s: float, root: Path) -> dict:
    """Generate's compile (the one in ``root``/functions/generate) of every schema of the
    sample, in this process: the engine's own function, without the request path's thread
    and time limit."""
    try:
        constraint = load_package("generate", ("constraint",), root=root).constraint
        import llama_cpp as L  # noqa: PLC0415

        params = L.llama_model_default_params()
        params.vocab_only = True
        model = L.llama_model_load_from_file(str(common.smollm2_path()).encode(), params)
        vocab = L.llama_model_get_vocab(model)
        tok = constraint.tokenizer_from_vocab(vocab, [L.llama_vocab_eos(vocab)])

        def one(schema):
            constraint.schema_rules.check(schema, "response_format")
            constraint.compile_matcher(tok, schema)
        engine = "llguidance (function/constraint.py)"
    except ImportError:
        structured = load_package("generate", ("structured",), root=root).structured

        def one(schema):
            structured.check_schema(schema, "response_format")
            structured._grammar(schema, "response_format")
        engine = "GBNF converter (function/structured.py)"
    times, refused, t0 = [], 0, time.monotonic()
    for e in sample:
        if time.monotonic() - t0 > budget_s:
            break
        t1 = time.perf_counter()
        try:
            one(e["schema"])
        except Exception:  # noqa: BLE001  (a refusal: counted, not timed)
            refused += 1
            continue
        times.append(time.perf_counter() - t1)
    return {"engine": engine, "compiled": len(times), "refused": refused, "of": len(sample),
            "p50_ms": 1e3 * percentile(times, .5), "p95_ms": 1e3 * percentile(times, .95),
            "max_ms": 1e3 * max(times)}


def rev_tree(rev: str) -> Path:
    """functions/generate, llmfn and scripts as of git ``rev`` in .state/bench/tree-REV (read
    with git archive: the work tree and the index are untouched)."""
    sha = subprocess.run(["git", "-C", str(common.REPO_ROOT), "rev-parse", "--short", rev],
                         check=True, capture_output=True, text=True).stdout.strip()
    tree = common.STATE / "bench" / f"tree-{sha}"
    if not (tree / ".done").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(common.REPO_ROOT), "archive", sha,
                                  "functions/generate", "llmfn"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        (tree / ".done").touch()
    return tree


def generate_server(port: int, env: dict, rev: str | None) -> common.Server:
    """Our generate under gunicorn: the work tree's, or git ``rev``'s (its llmfn first on
    PYTHONPATH, its gunicorn config)."""
    if rev is None:
        return common.gunicorn_server(port, env)
    from scripts import procs  # noqa: PLC0415  (scripts/procs.py, on the path through common)

    tree = rev_tree(rev)
    cmd = procs.gunicorn_cmd("generate", port,
                             conf=tree / "llmfn" / "src" / "llmfn" / "gunicorn_conf.py")
    cmd[cmd.index("--chdir") + 1] = str(tree / "functions" / "generate")
    return common.Server(cmd, port=port, host=common.HOST, name="gunicorn-generate",
                         log_path=common.LOG_DIR / f"gunicorn-generate-{port}.log",
                         env={**env, "PYTHONPATH": str(tree / "llmfn" / "src")},
                         cwd=common.REPO_ROOT, poll_s=common.POLL_S)


def _head(rev: str | None) -> str:
    if rev is not None:
        return subprocess.run(["git", "-C", str(common.REPO_ROOT), "rev-parse", "--short", rev],
                              capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", str(common.REPO_ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(common.REPO_ROOT), "status", "--porcelain",
                            "functions/generate", "llmfn"], capture_output=True,
                           text=True).stdout.strip()
    return rev + (" + uncommitted changes in functions/generate or llmfn" if dirty else "")


def plot(d: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = d["figures"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(MODES))
    for i, (n, label) in enumerate((("1", "1 stream"), ("4", "4 streams, per stream"))):
        ax1.bar([k + 0.4 * i - 0.2 for k in x], [f[m][n]["stream_tps"] for m in MODES],
                width=0.4, label=label)
    ax1.set_xticks(list(x), [m.replace(" ", "\n", 1) for m in MODES], fontsize=8)
    ax1.set(title="decode tok/s per stream (median)", ylim=(0, None))
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax2.bar(range(len(MODES)), [f[m]["4"]["aggregate_tps"] for m in MODES], color="tab:green")
    ax2.set_xticks(list(x), [m.replace(" ", "\n", 1) for m in MODES], fontsize=8)
    ax2.set(title="4 streams: aggregate tok/s (median of bursts)", ylim=(0, None))
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{d['model']}, {len(d['schemas'])} JSONSchemaBench schemas, "
                 f"max_tokens {d['max_tokens']}, {d['threads']} threads, generate at "
                 f"{d['generate_rev']}", fontsize=9)
    common.save_figure(fig, out, footer=common.figure_footer(d, "make bench-structured"))


def ratios(d: dict) -> dict:
    f = d["figures"]
    return {
        "constrained/unconstrained 1 stream": f[OURS_JSON]["1"]["stream_tps"]
        / f[OURS_FREE]["1"]["stream_tps"],
        "constrained/unconstrained 4 streams per stream": f[OURS_JSON]["4"]["stream_tps"]
        / f[OURS_FREE]["4"]["stream_tps"],
        "constrained/unconstrained 4 streams aggregate": f[OURS_JSON]["4"]["aggregate_tps"]
        / f[OURS_FREE]["4"]["aggregate_tps"],
        "generate/llama-server json_schema 1 stream": f[OURS_JSON]["1"]["stream_tps"]
        / f[LLAMA_JSON]["1"]["stream_tps"],
        "generate/llama-server json_schema 4 streams per stream": f[OURS_JSON]["4"]["stream_tps"]
        / f[LLAMA_JSON]["4"]["stream_tps"],
        "generate/llama-server json_schema 4 streams aggregate":
            f[OURS_JSON]["4"]["aggregate_tps"] / f[LLAMA_JSON]["4"]["aggregate_tps"],
    }


def render(d: dict) -> str:
    f, c = d["figures"], d["compile"]
    rows = ["| mode | 1 stream: tok/s | 4 streams: tok/s per stream | 4 streams: aggregate "
            "tok/s | tokens per answer (mean, 1 / 4) |", "|---|---:|---:|---:|---:|"]
    for m in MODES:
        rows.append(f"| {m} | {f[m]['1']['stream_tps']:.1f} | {f[m]['4']['stream_tps']:.1f} | "
                    f"{f[m]['4']['aggregate_tps']:.1f} | {f[m]['1']['tokens_mean']:.0f} / "
                    f"{f[m]['4']['tokens_mean']:.0f} |")
    checks = []
    for key, v in d["ratios"].items():
        bound = 0.90 if key.startswith("constrained") else 1.0
        checks.append(f"- {key}: {v:.2f} x (target >= {bound}: "
                      f"{'met' if v >= bound else 'NOT met'})")
    return "\n".join([
        f"Run of {d['date']} UTC on {d['machine']}, shared with other jobs; generate at "
        f"{d['generate_rev']}. Command: `make bench-structured` "
        f"(`bench/bench_structured.py {d['argv']}`). Model {d['model']}, {d['threads']} threads, "
        f"{SLOTS} slots each (llama-server `-np {SLOTS} -kvu`), greedy chat SSE, max_tokens "
        f"{d['max_tokens']}, {d['rounds']} rounds alternating the order of the modes, "
        f"{len(d['schemas'])} schemas: " + ", ".join(d["schemas"]) + ". Decode tok/s: tokens "
        "after the first / first to last text chunk, median over streams; aggregate: all "
        "tokens of a burst of 4 / its wall time, median over bursts.",
        "", *rows, "", *checks, "",
        *(render_pairs(d["pairs"]) + [""] if d.get("pairs") else []),
        f"Compile time across the sample ({c['engine']}, in-process, keyword check included): "
        f"p50 {c['p50_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms, max {c['max_ms']:.0f} ms over "
        f"{c['compiled']} schemas compiled ({c['refused']} refused) of {c['of']}.",
        "",
        "![decode tok/s per mode at 1 and 4 streams](img/bench-structured.png)",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", type=int, default=8, help="multiple of 4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--compile-budget-s", type=float, default=120.0)
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--rev", help="run generate as of this git revision (default: the work "
                                  "tree)")
    ap.add_argument("--pairs", type=int, default=3,
                    help="rounds of the paired arms (0: skip them)")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    if not 0 <= args.pairs <= 9:
        ap.error("--pairs 0..9")
    if not 1 <= args.rounds <= 5 or not 4 <= args.schemas <= 24 or args.schemas % 4:
        ap.error("--rounds 1..5, --schemas a multiple of 4 in 4..24")
    sample = load_sample(args.sample)
    model = common.smollm2_path()
    env = {**common.generate_env(common.file_model_env(model), n_ctx=args.ctx_per_slot,
                                 threads=args.threads),
           "SLOTS": str(SLOTS), "QUEUE_SIZE": str(SLOTS), "GUNICORN_THREADS": str(SLOTS + 4)}
    # the deployed thread policy: OpenMP's default wait, threads following the free CPUs
    servers = {"ours": generate_server(common.free_port(), env, args.rev),
               "llama": common.llama_server(
                   common.free_port(), model, n_ctx=SLOTS * args.ctx_per_slot,
                   threads=args.threads, parallel=SLOTS,
                   extra=["-kvu", "--kv-unified-per-slot", str(args.ctx_per_slot)])}
    t0 = time.perf_counter()
    try:
        for name, srv in servers.items():
            log(f"{name}: ready in {srv.start().wait_ready():.2f} s")
        ports = {OURS_FREE: servers["ours"].port, OURS_JSON: servers["ours"].port,
                 LLAMA_JSON: servers["llama"].port, LLAMA_FREE: servers["llama"].port}
        schemas = pick_schemas(sample, ports, args.schemas)
        schemas = schemas[:len(schemas) // SLOTS * SLOTS]
        if not schemas:
            raise SystemExit("no schema accepted by both servers")
        pairs = (paired(servers["ours"].port, servers["ours"].proc.pid, schemas, args)
                 if args.pairs else None)
        res = measure(ports, schemas, args)
    finally:
        for srv in servers.values():
            srv.stop()
    log(f"streams measured in {time.perf_counter() - t0:.0f} s")
    data = {**common.run_stamp(), "model": model.name, "generate_rev": _head(args.rev),
            "argv": " ".join(argv if argv is not None else sys.argv[1:]),
            "max_tokens": args.max_tokens, "rounds": args.rounds, "threads": args.threads,
            "schemas": [f"{e['dataset']}/{e['name']}" for e in schemas],
            "figures": figures(res), "raw": res, "pairs": pairs,
            "compile": compile_times(sample, args.compile_budget_s,
                                     rev_tree(args.rev) if args.rev else common.REPO_ROOT)}
    data["ratios"] = ratios(data)
    plot(data, PLOT_SCRATCH if args.no_doc else PLOT)
    log(f"wrote {common.write_json('structured' + ('-scratch' if args.no_doc else ''), data)}")
    md = render(data)
    print(md)
    if not args.no_doc:
        common.update_doc_section("structured-speed", md, DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
