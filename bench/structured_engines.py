"""Which structured-output engine: llguidance, XGrammar and today's GBNF converter compared on
JSONSchemaBench (issue 22), without a model: coverage, silent acceptance of invalid instances,
rejection of valid ones, compile time and time per token mask, with SmolLM2's vocabulary.

Run by hand (not in `make test`): the engines live in venvs of their own, so each engine runs
where it imports and the report merges their JSON (.state/bench/structured-engines-ENGINE.json):

    .state/venv-engines/bin/python -m bench.structured_engines --engines llguidance,xgrammar
    .venv/bin/python bench/structured_engines.py --engines gbnf      # llama.cpp's sampler
    .venv/bin/python bench/structured_engines.py --report [--no-doc]

For each schema: compile (refused = an error or the keyword check), then feed every instance's
canonical serialization (``json.dumps(data, ensure_ascii=False, separators=(",", ":"))``) token
by token: before each token the engine computes the set of allowed tokens (timed: the time per
mask) and the instance is accepted when every token was allowed and, at the end, EOS is.
Coverage = compiled and every valid instance accepted (schemas without instances: compiled).
Each schema runs in a worker process with a deadline (--timeout-s): a hang or crash refuses it.
"""
from __future__ import annotations

import argparse
import json
import lzma
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

from bench import common  # stdlib only

SAMPLE = Path("/work/shared/jsonschemabench/sample.jsonl.xz")
ENGINES = ("llguidance", "xgrammar", "gbnf")
# The converter and keyword check as functions/generate/function/structured.py had them before
# issue 22 (the "today" of the comparison), read from git so a later change does not move it.
BASELINE_COMMIT = "f16879f"
# Full-vocabulary masks of llama.cpp's grammar sampler take tens of ms: time only this many.
GBNF_FULL_MASKS = 300
# Published coverage (arXiv 2501.10868, table of empirical coverage; the sample's README).
PAPER = {"Github_hard": "Guidance 41 %, llama.cpp 39 %, XGrammar 28 %",
         "Glaiveai2K": "every engine > 86 %"}


def canonical(data) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def schema_order(schema, data):
    """``data`` with each object's keys in the order its schema lists them in ``properties``
    (through local ``$ref``, ``allOf``/``anyOf``/``oneOf``), other keys after: the order the
    engines generate in. Used only to tell a valid instance rejected for its key order from
    one rejected for its content."""
    def resolve(node, hops=0):
        while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#") and hops < 20:
            cur = schema
            for part in node["$ref"][1:].split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                cur = cur[int(part)] if isinstance(cur, list) else cur.get(part, {})
            node, hops = cur, hops + 1
        return node if isinstance(node, dict) else {}

    def props(node, acc):
        node = resolve(node)
        for key, sub in (node.get("properties") or {}).items():
            acc.setdefault(key, sub)
        for kw in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(kw) or []:
                props(sub, acc)
        return acc

    def items(node):
        node = resolve(node)
        if isinstance(node.get("items"), dict):
            return node["items"]
        for kw in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(kw) or []:
                if found := items(sub):
                    return found
        return {}

    def walk(node, x):
        if isinstance(x, dict):
            p = props(node, {})
            order = {k: i for i, k in enumerate(p)}
            return {k: walk(p.get(k, {}), x[k])
                    for k in sorted(x, key=lambda k: order.get(k, len(order)))}
        if isinstance(x, list):
            return [walk(items(node), y) for y in x]
        return x
    try:
        return walk(schema, data)
    except (KeyError, IndexError, TypeError, ValueError, RecursionError):
        return data


def load_sample(path: Path) -> list[dict]:
    with lzma.open(path, "rt") as f:
        return [json.loads(line) for line in f]


# -- SmolLM2's vocabulary from its GGUF (vocab only) ----------------------------------------------
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table (GGUF stores byte-level BPE tokens so)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _gguf_tokenizer(path: Path) -> dict:
    """The ``tokenizer.ggml.*`` fields of a GGUF, cached as JSON beside the raw results (the
    gguf reader takes ~40 s over SmolLM2's 49,152 tokens and merges)."""
    cache = common.STATE / "bench" / f"{path.stem}.tokenizer.json"
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        return json.loads(cache.read_text())
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(name):
        f = r.fields[name]
        return [bytes(f.parts[i]).decode() if f.types[-1] == gguf.GGUFValueType.STRING
                else int(f.parts[i][0]) for i in f.data]

    t = {k: field(f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "merges")}
    t.update({k: field(f"tokenizer.ggml.{k}")[0] for k in ("eos_token_id", "bos_token_id")})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(t))
    return t


class Vocab:
    """Tokens (bytes and GPT-2 strings), EOS and a BPE tokenizer (HF tokenizers, with the
    ``smollm`` pre-tokenizer: single digits, then GPT-2's split) read from the GGUF."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        t = _gguf_tokenizer(path)
        self.strings, types, merges = t["tokens"], t["token_type"], t["merges"]
        self.eos, self.bos = t["eos_token_id"], t["bos_token_id"]
        dec = _byte_decoder()
        self.special = [i for i, t in enumerate(types) if t == 3]  # CONTROL
        self.bytes = [b"\xff" + s.encode() if i in self.special else bytes(dec[c] for c in s)
                      for i, s in enumerate(self.strings)]
        bpe = models.BPE({s: i for i, s in enumerate(self.strings)},
                         [tuple(m.split(" ", 1)) for m in merges])
        self.hf = Tokenizer(bpe)
        self.hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        self.hf.decoder = decoders.ByteLevel()

    def tokenize(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids


# -- engines: compile(schema) -> matcher factory; a matcher has allowed(t), mask(), consume(t) --
class Refused(Exception):
    pass


class LLGuidance:
    name = "llguidance"
    # As function/constraint.py compiles: compact separators, no free whitespace (the answer
    # stays inside the JSON), oneOf only where llguidance proves the branches disjoint, no
    # keyword silently skipped.
    OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":",
               "coerce_one_of": False, "lenient": False}

    def __init__(self, vocab: Vocab):
        import llguidance
        from llguidance import TokenizerWrapper

        class _Tok:
            eos_token_id, bos_token_id = vocab.eos, vocab.bos
            tokens, special_token_ids = vocab.bytes, vocab.special

            def __call__(self, b: bytes):
                return vocab.tokenize(b.decode("utf-8", "replace"))

        self.ll = llguidance
        self.tok = llguidance.LLTokenizer(TokenizerWrapper(_Tok()))
        self.n, self.eos = self.tok.vocab_size, vocab.eos

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, overrides=self.OPTIONS)
        m = self.ll.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise Refused(m.get_error()[:300])
        return m

    def start(self, compiled):
        compiled.reset()
        return compiled

    @staticmethod
    def mask(m) -> bytes:
        return m.compute_bitmask()

    @staticmethod
    def allowed(mask: bytes, t: int) -> bool:
        return bool(mask[t >> 3] >> (t & 7) & 1)

    @staticmethod
    def consume(m, t: int) -> bool:
        return m.consume_token(t)


class XGrammar:
    name = "xgrammar"

    def __init__(self, vocab: Vocab):
        import numpy as np
        import xgrammar as xgr

        self.xgr, self.np = xgr, np
        info = xgr.TokenizerInfo(vocab.strings, xgr.VocabType.BYTE_LEVEL,
                                 vocab_size=len(vocab.strings), stop_token_ids=[vocab.eos])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.n, self.eos = len(vocab.strings), vocab.eos
        self.buf = np.zeros((1, (self.n + 31) // 32), dtype=np.int32)

    def compile(self, schema):
        try:
            # strict_mode=False: JSON Schema's own semantics (extra properties allowed unless
            # the schema says otherwise); compact separators, no free whitespace.
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                     separators=(",", ":"), strict_mode=False)
        except Exception as err:  # noqa: BLE001  (every compile error is a refusal)
            raise Refused(f"{type(err).__name__}: {err}"[:300]) from None

    def start(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m):
        m.fill_next_token_bitmask(self.buf)
        return self.buf[0]

    @staticmethod
    def allowed(mask, t: int) -> bool:
        return bool(int(mask[t >> 5]) >> (t & 31) & 1)

    @staticmethod
    def consume(m, t: int) -> bool:
        return m.accept_token(t)


class Gbnf:
    """Today's path: the keyword check and llama-cpp-python's ``json_schema_to_gbnf`` (as of
    :data:`BASELINE_COMMIT`), run by llama.cpp's own grammar sampler on the real vocabulary.
    Needs the project venv. A token is allowed when the sampler leaves its logit finite (a
    one-candidate apply); the full-vocabulary apply that generate runs today is timed apart."""
    name = "gbnf"

    def __init__(self, vocab_path: Path):
        import ctypes

        import llama_cpp as L

        self.L, self.ct = L, ctypes
        params = L.llama_model_default_params()
        params.vocab_only = True
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(vocab_path).encode(), params)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n = L.llama_vocab_n_tokens(self.vocab)
        self.eos = L.llama_vocab_eos(self.vocab)
        self.one = (L.llama_token_data * 1)()
        self.full = (L.llama_token_data * self.n)()
        for i in range(self.n):
            self.full[i].id, self.full[i].logit, self.full[i].p = i, 0.0, 0.0
        self.pristine = (L.llama_token_data * self.n)()
        ctypes.memmove(self.pristine, self.full, ctypes.sizeof(self.full))
        self.structured = _baseline_structured()
        self.full_left = GBNF_FULL_MASKS

    def tokenize(self, text: str) -> list[int]:
        b = text.encode()
        out = (self.L.llama_token * (len(b) + 8))()
        n = self.L.llama_tokenize(self.vocab, b, len(b), out, len(out), False, False)
        return list(out[:n])

    def compile(self, schema):
        s = self.structured
        try:
            if not isinstance(schema, dict):
                raise s.InvalidRequest("the schema must be an object")
            s.check_schema(schema, "response_format")
            grammar = s._grammar(schema, "response_format")
        except s.InvalidRequest as err:
            raise Refused(str(err)[:300]) from None
        smpl = self.L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not smpl:
            raise Refused("llama.cpp did not parse the grammar")
        self.L.llama_sampler_free(smpl)
        return grammar

    def start(self, grammar):
        return self.L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")

    def _apply(self, smpl, arr, n) -> None:
        cur = self.L.llama_token_data_array(arr, n, -1, False)
        self.L.llama_sampler_apply(smpl, self.ct.byref(cur))

    def mask(self, smpl):
        """The real mask on the whole vocabulary while the budget lasts; then None (checked one
        candidate at a time in :meth:`allowed_in`)."""
        if self.full_left <= 0:
            return None
        self.full_left -= 1
        self.ct.memmove(self.full, self.pristine, self.ct.sizeof(self.full))
        self._apply(smpl, self.full, self.n)
        return self.full

    def allowed_in(self, smpl, mask, t: int) -> bool:
        if mask is not None:
            return mask[t].logit != float("-inf")
        self.one[0].id, self.one[0].logit, self.one[0].p = t, 0.0, 0.0
        self._apply(smpl, self.one, 1)
        return self.one[0].logit != float("-inf")

    def consume(self, smpl, t: int) -> bool:
        self.L.llama_sampler_accept(smpl, t)
        return True


def _baseline_structured():
    """functions/generate/function/structured.py at :data:`BASELINE_COMMIT`, as a module."""
    import types

    src = subprocess.run(["git", "-C", str(common.REPO_ROOT), "show",
                          f"{BASELINE_COMMIT}:functions/generate/function/structured.py"],
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType("structured_baseline")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, "structured_baseline.py", "exec"), mod.__dict__)  # noqa: S102
    return mod


# -- one schema ------------------------------------------------------------------------------------
def _make_engine(name: str):
    vocab_path = common.smollm2_path()
    if name == "gbnf":
        eng = Gbnf(vocab_path)
        return eng, eng.tokenize
    vocab = Vocab(vocab_path)
    return (LLGuidance if name == "llguidance" else XGrammar)(vocab), vocab.tokenize


def check_schema(eng, tokenize, entry: dict) -> dict:
    """Compile one schema and run its instances; mask times in µs."""
    out = {"dataset": entry["dataset"], "name": entry["name"], "status": "ok", "reason": "",
           "valid_ok": 0, "valid_rejected": 0, "invalid_accepted": 0, "invalid_rejected": 0,
           "mask_us": [], "rejected_at": []}
    t0 = time.perf_counter()
    try:
        compiled = eng.compile(entry["schema"])
    except Refused as err:
        out["status"], out["reason"] = "refused", str(err)
    except Exception as err:  # noqa: BLE001  (any failure to compile refuses the schema)
        out["status"], out["reason"] = "refused", f"{type(err).__name__}: {err}"[:300]
    out["compile_s"] = time.perf_counter() - t0
    if out["status"] != "ok":
        return out
    allowed = getattr(eng, "allowed_in", None) or (lambda m, mask, t: eng.allowed(mask, t))

    def accepts(text: str, timed: bool) -> bool:
        m = eng.start(compiled)
        ok = True
        for t in tokenize(text) + [None]:
            t1 = time.perf_counter()
            mask = eng.mask(m)
            if mask is not None and timed:
                out["mask_us"].append(round((time.perf_counter() - t1) * 1e6, 1))
            tok = eng.eos if t is None else t
            if not allowed(m, mask, tok) or (t is not None and not eng.consume(m, tok)):
                ok = False
                break
        if isinstance(eng, Gbnf):
            eng.L.llama_sampler_free(m)
        return ok

    out["valid_rejected_order"] = 0  # of valid_rejected: accepted with keys in schema order
    for test in entry["tests"]:
        ok = accepts(canonical(test["data"]), True)
        key = ("valid_ok" if ok else "valid_rejected") if test["valid"] else \
            ("invalid_accepted" if ok else "invalid_rejected")
        out[key] += 1
        if test["valid"] and not ok:
            reordered = canonical(schema_order(entry["schema"], test["data"]))
            if reordered != canonical(test["data"]) and accepts(reordered, False):
                out["valid_rejected_order"] += 1
            else:
                out["rejected_at"].append(canonical(test["data"])[:120])
    return out


def _worker(name: str, conn) -> None:
    eng, tokenize = _make_engine(name)
    conn.send("ready")
    while True:
        entry = conn.recv()
        if entry is None:
            return
        conn.send(check_schema(eng, tokenize, entry))


class Runner:
    """One engine in a worker process; a schema past its deadline (or a crash) kills it. A
    spare worker starts beside it, so a kill costs no start-up (XGrammar's is ~20 s)."""

    def __init__(self, name: str, timeout_s: float):
        self.name, self.timeout_s = name, timeout_s
        self.worker, self.spare = None, self._spawn()

    def _spawn(self):
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(self.name, child), daemon=True)
        proc.start()
        return proc, conn

    def _next(self) -> None:
        proc, conn = self.spare
        if not conn.poll(180) or conn.recv() != "ready":
            raise RuntimeError(f"{self.name}: the worker did not start")
        self.worker, self.spare = (proc, conn), self._spawn()

    def run(self, entry: dict) -> dict:
        if self.worker is None or not self.worker[0].is_alive():
            self._next()
        proc, conn = self.worker
        t0 = time.perf_counter()
        conn.send(entry)
        try:
            if conn.poll(self.timeout_s):
                return conn.recv()
            why = f"timeout after {self.timeout_s:.0f} s"
        except EOFError:
            why = "the engine crashed"
        proc.kill()
        proc.join(5)
        self.worker = None
        return {"dataset": entry["dataset"], "name": entry["name"], "status": "refused",
                "reason": why, "compile_s": time.perf_counter() - t0, "valid_ok": 0,
                "valid_rejected": 0, "invalid_accepted": 0, "invalid_rejected": 0,
                "mask_us": [], "rejected_at": []}

    def close(self) -> None:
        for w in (self.worker, self.spare):
            if w is not None:
                w[0].kill()
                w[0].join(5)


def run_engine(name: str, sample: list[dict], timeout_s: float, budget_s: float,
               done: list[dict] = ()) -> dict:
    """Every schema of ``sample`` not in ``done`` (the results of a run cut by its budget)."""
    done = [r for r in done if r["valid_rejected"] == 0 or "valid_rejected_order" in r]
    runner, results, t0 = Runner(name, timeout_s), list(done), time.monotonic()
    seen = {(r["dataset"], r["name"]) for r in done}
    try:
        for i, entry in enumerate(sample):
            if (entry["dataset"], entry["name"]) in seen:
                continue
            if time.monotonic() - t0 > budget_s:
                common.log(f"{name}: time budget spent after {i} schemas")
                break
            results.append(runner.run(entry))
            if i % 100 == 0:
                common.log(f"{name}: {i}/{len(sample)} ({time.monotonic() - t0:.0f} s)")
    finally:
        runner.close()
    version = _version(name)
    return {**common.run_stamp(), "engine": name, "version": version, "timeout_s": timeout_s,
            "schemas": len(results), "of": len(sample), "results": results}


def _version(name: str) -> str:
    from importlib.metadata import version
    pkg = {"llguidance": "llguidance", "xgrammar": "xgrammar", "gbnf": "llama_cpp_python"}[name]
    return version(pkg)


# -- report ----------------------------------------------------------------------------------------
def aggregate(data: dict) -> dict:
    """Per dataset and overall: schemas, covered, refused, under/over-constraint, timings."""
    rows: dict[str, dict] = {}
    for r in data["results"]:
        for key in (r["dataset"], "all"):
            a = rows.setdefault(key, {"n": 0, "covered": 0, "covered_order": 0, "refused": 0,
                                      "under": 0, "under_schemas": 0, "over": 0,
                                      "over_order": 0, "valid": 0, "invalid": 0,
                                      "compile": [], "mask": []})
            order = r.get("valid_rejected_order", 0)
            a["n"] += 1
            a["refused"] += r["status"] != "ok"
            a["covered"] += r["status"] == "ok" and r["valid_rejected"] == 0
            a["covered_order"] += r["status"] == "ok" and r["valid_rejected"] == order
            a["over_order"] += order
            a["under"] += r["invalid_accepted"]
            a["under_schemas"] += r["invalid_accepted"] > 0
            a["over"] += r["valid_rejected"]
            a["valid"] += r["valid_ok"] + r["valid_rejected"]
            a["invalid"] += r["invalid_accepted"] + r["invalid_rejected"]
            if r["status"] == "ok":
                a["compile"].append(r["compile_s"])
            a["mask"].extend(r["mask_us"])
    return rows


def _p(values, q):
    return common.percentile(values, q) or 0.0


def render(datas: list[dict]) -> str:
    aggs = {d["engine"]: aggregate(d) for d in datas}
    engines = [d["engine"] for d in datas]
    datasets = sorted({k for a in aggs.values() for k in a if k != "all"}) + ["all"]
    runs = "; ".join(f"{d['engine']} {d['version']} on {d['date']} UTC" for d in datas)
    lines = [
        f"Measured without a model by `make bench-structured-engines` "
        f"(`bench/structured_engines.py`; {runs}; {datas[0]['machine']}, shared with other "
        "jobs): all 1,584 schemas of `../shared/jsonschemabench/sample.jsonl.xz` and their "
        "4,599 instances, SmolLM2-135M's vocabulary (49,152 tokens, read from the GGUF). Each "
        "instance is serialized as `json.dumps(data, ensure_ascii=False, separators=(\",\", "
        "\":\"))`, tokenized, and fed token by token: before each token the engine computes "
        "the set of allowed tokens, and the instance is accepted when every token and then "
        "end-of-generation were allowed. A schema the engine refuses, or whose compile and "
        f"instances take longer than {datas[0]['timeout_s']:.0f} s, is not covered.",
        "",
        "- **cov.**: schemas compiled whose valid instances are all accepted; in brackets, the "
        "same when a valid instance may also be written with its keys in the order the schema "
        "lists them (the engines generate properties in that order, as a model does with "
        "them; JSON objects are unordered, so this is the coverage that matters for "
        "generation).",
        "- **under**: invalid instances accepted / invalid instances of compiled schemas: a "
        "silent violation each.",
        "- **over**: valid instances rejected / valid instances of compiled schemas (in "
        "brackets, how many of them pass with their keys in the schema's order).",
        "- **gbnf** is today's path (before issue 22): the keyword check of `structured.py` and "
        "llama-cpp-python's `json_schema_to_gbnf`, run by llama.cpp's own grammar sampler "
        "(`llama_sampler_init_grammar`, one candidate at a time; the full-vocabulary apply "
        f"that generate runs per token is timed on the first {GBNF_FULL_MASKS} steps of each "
        "worker). llguidance with the options `function/constraint.py` uses (compact, no "
        "free whitespace, `oneOf` only when provably exclusive, no keyword skipped); "
        "XGrammar `compile_json_schema(any_whitespace=False, separators=(\",\", \":\"), "
        "strict_mode=False)` (JSON Schema's own semantics for extra properties), one thread.",
        "",
        "| dataset | schemas | " + " | ".join(
                 f"{e} cov. | {e} under | {e} over" for e in engines) + " | paper |",
             "|---|---:|" + "---:|---:|---:|" * len(engines) + "---|"]
    for ds in datasets:
        cells = []
        n = max(a[ds]["n"] for a in aggs.values() if ds in a)
        for e in engines:
            a = aggs[e].get(ds)
            part = "" if a is None or a["n"] == n else f" of {a['n']} run"
            cells += ([f"{100 * a['covered'] / a['n']:.0f} % "
                       f"({100 * a['covered_order'] / a['n']:.0f} %){part}",
                       f"{a['under']}/{a['invalid']}",
                       f"{a['over']}/{a['valid']} ({a['over_order']})"]
                      if a else ["-", "-", "-"])
        name = f"**{ds}**" if ds == "all" else ds
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + f" | {PAPER.get(ds, '')} |")
    lines += ["", "| engine | version | compile p50 | compile p95 | compile max | mask p50 | "
              "mask p95 | masks timed | run |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for d in datas:
        a = aggs[d["engine"]]["all"]
        c, m = a["compile"], a["mask"]
        lines.append(
            f"| {d['engine']} | {d['version']} | {1e3 * _p(c, .5):.2f} ms | "
            f"{1e3 * _p(c, .95):.2f} ms | {1e3 * max(c):.0f} ms | {_p(m, .5):.0f} µs | "
            f"{_p(m, .95):.0f} µs | {len(m)} | {d['date']}, {d['schemas']}/{d['of']} schemas, "
            f"timeout {d['timeout_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="llguidance,xgrammar")
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--limit", type=int, default=0, help="first N schemas only (0: all)")
    ap.add_argument("--timeout-s", type=float, default=10.0, help="per schema")
    ap.add_argument("--budget-s", type=float, default=900.0, help="per engine")
    ap.add_argument("--resume", action="store_true",
                    help="keep the schemas an earlier run of the engine did, run the rest")
    ap.add_argument("--report", action="store_true", help="merge the JSON and print the table")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    if args.report:
        datas = [json.loads(p.read_text()) for e in ENGINES
                 if (p := common.STATE / "bench" / f"structured-engines-{e}.json").exists()]
        md = render(datas)
        print(md)
        if not args.no_doc:
            common.update_doc_section("structured-engines", md,
                                      common.REPO_ROOT / "docs" / "structured.md")
        return
    sample = load_sample(args.sample)
    if args.limit:
        sample = sample[:args.limit]
    for name in args.engines.split(","):
        path = common.STATE / "bench" / f"structured-engines-{name}.json"
        done = json.loads(path.read_text())["results"] if args.resume and path.exists() else []
        data = run_engine(name, sample, args.timeout_s, args.budget_s, done)
        path = common.write_json(f"structured-engines-{name}", data)
        common.log(f"wrote {path}")
        print(render([data]))


if __name__ == "__main__":
    main()
