"""JSONSchemaBench-format files checked against the structured-output engine without a model.

A file is JSONL (optionally .xz): ``{"dataset", "name", "schema", "tests": [{"description",
"valid", "data"}]}``. For each schema the engine either refuses it (the 400's reason is kept)
or its compiled matcher is fed, token by token, the canonical serialization of every test
instance: ``json.dumps(data, separators=SEPARATORS, ensure_ascii=False)`` then end of
generation. An invalid instance it accepts is under-constraint (a silent violation waiting to
happen); a valid one it rejects is over-constraint. Validity is the file's mark, cross-checked
with jsonschema (``validator_for`` + ``FORMAT_CHECKER``); an instance where they disagree is
set aside and reported, not counted either way. Imports generate's ``function`` package:
used by functions/generate/tests (where that package is on the path).
"""
from __future__ import annotations

import hashlib
import json
import lzma
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from function import constraint, schema_rules
from llmfn.errors import InvalidRequest

SEPARATORS = constraint.SEPARATORS

# The paper's coverage figures (JSONSchemaBench, arXiv 2501.10868, and ../shared's README):
# Guidance (llguidance), llama.cpp, XGrammar; None where the README gives no figure.
PAPER = {"Github_hard": {"guidance": 0.41, "llama.cpp": 0.39, "xgrammar": 0.28},
         "Glaiveai2K": {"guidance": 0.86, "llama.cpp": 0.86, "xgrammar": 0.86}}


def read(path: str) -> list[dict]:
    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def canonical(data) -> str:
    return json.dumps(data, separators=SEPARATORS, ensure_ascii=False)


@dataclass
class Result:
    schemas: dict = field(default_factory=lambda: defaultdict(int))
    covered: dict = field(default_factory=lambda: defaultdict(int))
    refused: dict = field(default_factory=lambda: defaultdict(list))  # dataset -> (name, why)
    under: list = field(default_factory=list)  # (dataset, name, text) invalid but accepted
    over: list = field(default_factory=list)  # (dataset, name, text, why) valid but rejected
    key_order: list = field(default_factory=list)  # (dataset, name, text) accepted reordered
    disagree: list = field(default_factory=list)  # (dataset, name, text) file vs jsonschema
    valid_tested: int = 0

    def coverage(self, dataset: str) -> float:
        return self.covered[dataset] / self.schemas[dataset] if self.schemas[dataset] else 0.0


def accepts(tokenizer, matcher, text: str) -> tuple[bool, str]:
    """Whether ``matcher`` takes ``text`` token by token and then end of generation (one call
    into the engine: it stops at the first token its mask forbids)."""
    tokens = tokenizer.tokenize_str(text)
    i = matcher.try_consume_tokens(tokens)
    if i < len(tokens):
        done = tokenizer.decode_str(tokens[:i])
        return False, f"token {i} ({tokenizer.decode_str([tokens[i]])!r}) after {done[-40:]!r}"
    if not matcher.is_accepting():
        return False, "incomplete at the end"
    return True, ""


def reordered(tokenizer, matcher, data, budget: int = 4000) -> bool:
    """Whether ``matcher`` takes ``data`` with each object's keys in some order (the engine
    writes properties in the schema's order; JSON objects are unordered): a depth-first
    search over key orders, at most ``budget`` tries."""
    tries = [0]

    def feed(text: str) -> int | None:
        tokens = tokenizer.tokenize_str(text)
        n = matcher.try_consume_tokens(tokens)
        if n == len(tokens):
            return n
        matcher.rollback(n)
        return None

    def value(v) -> int | None:
        """Tokens consumed for ``v`` (all rolled back and None if it cannot be placed)."""
        if isinstance(v, list):
            used = feed("[")
            for i, item in enumerate(v):
                step = None if used is None else (feed(",") if i else 0)
                inner = None if step is None else value(item)
                if inner is None:
                    if used is not None:
                        matcher.rollback(used + (step or 0))
                    return None
                used += step + inner
            end = None if used is None else feed("]")
            if end is None:
                if used is not None:
                    matcher.rollback(used)
                return None
            return used + end
        if not isinstance(v, dict):
            return feed(canonical(v))
        start = feed("{")
        if start is None:
            return None
        rest = members(v, list(v), True)
        if rest is None:
            matcher.rollback(start)
            return None
        return start + rest

    def members(v: dict, left: list, first: bool) -> int | None:
        if not left:
            return feed("}")
        for key in left:
            tries[0] += 1
            if tries[0] > budget:
                return None
            head = feed(("" if first else ",") + canonical(key) + ":")
            if head is None:
                continue
            inner = value(v[key])
            if inner is None:
                matcher.rollback(head)
                continue
            rest = members(v, [k for k in left if k != key], False)
            if rest is None:
                matcher.rollback(head + inner)
                continue
            return head + inner + rest
        return None

    return value(data) is not None and matcher.is_accepting()


def random_walk(tokenizer, matcher, rng, max_tokens: int) -> str | None:
    """A random output the matcher allows, or None if it does not end within ``max_tokens``:
    uniform over the allowed tokens, or (half the steps) over the allowed one-byte tokens, so
    punctuation that ends a part (``@``, ``.``, ``:``, the closing quote) comes up often."""
    import numpy as np
    not_eos, one_byte = _token_classes(tokenizer)
    out = []
    for _ in range(max_tokens):
        if matcher.is_stopped():
            break
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[:tokenizer.vocab_size].astype(bool)
        mask &= not_eos
        allowed = np.flatnonzero(mask).tolist()
        if matcher.is_accepting() and (not allowed or rng.random() < 0.1):
            break
        short = np.flatnonzero(mask & one_byte).tolist()
        token = rng.choice(short if short and rng.random() < 0.5 else allowed)
        assert matcher.consume_token(token)
        out.append(token)
    if not matcher.is_accepting():
        return None
    return tokenizer.decode_str(out)


_TOKEN_CLASSES: dict[int, tuple] = {}


def _token_classes(tokenizer) -> tuple:
    """Boolean arrays over the vocabulary: not an end-of-generation token, one byte long
    (computed once per tokenizer: a Python pass over the vocabulary per step was the walk's
    cost)."""
    import numpy as np
    key = id(tokenizer)
    if key not in _TOKEN_CLASSES:
        n = tokenizer.vocab_size
        not_eos = np.ones(n, dtype=bool)
        not_eos[[t for t in tokenizer.eos_tokens if t < n]] = False
        one_byte = np.array([len(tokenizer.decode_bytes([t])) == 1 for t in range(n)])
        _TOKEN_CLASSES[key] = (tokenizer, not_eos, one_byte)  # the tokenizer keeps id unique
    return _TOKEN_CLASSES[key][1:]


def _in_children(n: int, judge) -> list[bool]:
    """``judge(i)`` for i in range(n) in forked children: llama.cpp's grammar parser crashes
    the process on some grammars the old converter wrote (as it would have crashed the
    server); such a schema counts False and the next child goes on after it."""
    import os
    import tempfile
    verdicts: list[bool] = []
    while len(verdicts) < n:
        with tempfile.TemporaryFile("w+") as out:
            pid = os.fork()
            if pid == 0:  # the child: one character per verdict, then a clean exit
                import faulthandler
                faulthandler.disable()  # a crash here is expected, not a test's failure
                code = 0
                try:
                    for i in range(len(verdicts), n):
                        out.write("1" if judge(i) else "0")
                        out.flush()
                except BaseException:
                    code = 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            done = [c == "1" for c in out.read()]
        verdicts += done
        if len(verdicts) < n and status != 0:
            verdicts.append(False)  # the schema that crashed it
    return verdicts


# The keyword check of generate's converter before issue 22 (llama-cpp-python's
# json_schema_to_gbnf): a schema it let through is an upper bound of what it covered.
OLD_SUPPORTED = {"type", "properties", "required", "additionalProperties", "items",
                 "prefixItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
                 "definitions", "minItems", "maxItems", "minLength", "maxLength", "pattern",
                 "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
OLD_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id",
                   "$comment", "nullable", "deprecated", "readOnly", "writeOnly"}
OLD_FORMATS = {"date", "time", "date-time", "uuid"}


def _old_check(schema) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key not in OLD_SUPPORTED and key not in OLD_ANNOTATIONS:
            return False
        if key == "format" and value not in OLD_FORMATS:
            return False
        subs = []
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            subs = list(value.values())
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            subs = value
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
            subs = [value]
        if not all(_old_check(sub) for sub in subs):
            return False
    return True


def old_converter_counts(path: str, vocab, tokenize) -> dict[str, list[int]]:
    """Per dataset, ``[covered, schemas]`` of generate's converter before issue 22: its
    keyword check, llama-cpp-python's json_schema_to_gbnf and llama.cpp's grammar sampler,
    checked token by token like ours (each token applied alone to the sampler: allowed or
    -inf). ``tokenize`` is the tokenizer's ``str -> [token]``. Slow (forked children, a
    grammar sampler per schema): the conformance test reads its result from
    :data:`BASELINE_FILE`, written by ``--baseline`` (see :func:`main`)."""
    import ctypes
    import math

    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    eos = llama_cpp.llama_vocab_eos(vocab)

    def allowed(sampler, token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        arr = llama_cpp.llama_token_data_array(data, 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return not math.isinf(data[0].logit)

    def takes(sampler, text: str) -> bool:
        llama_cpp.llama_sampler_reset(sampler)
        for token in tokenize(text):
            if not allowed(sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(sampler, eos)

    def covers(row) -> bool:
        if not _old_check(row["schema"]):
            return False
        try:
            gbnf = json_schema_to_gbnf(json.dumps(row["schema"])).replace(
                'char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
        except Exception:  # the converter refused it (any error: it was a 400)
            return False
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        try:
            return all(takes(sampler, canonical(t["data"])) == t["valid"] for t in row["tests"])
        finally:
            llama_cpp.llama_sampler_free(sampler)

    rows = read(path)
    verdicts = _in_children(len(rows), lambda i: covers(rows[i]))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row, ok in zip(rows, verdicts):
        counts[row["dataset"]][0] += ok
        counts[row["dataset"]][1] += 1
    return dict(counts)


# The old converter's coverage of the default sample, computed once (it is no longer the
# product's code): written by ``--baseline``, read by the conformance test, which first checks
# that the file's sha256 is the sample's.
BASELINE_FILE = Path(__file__).resolve().parents[2] / "functions" / "generate" / "tests" / \
    "data" / "gbnf_coverage.json"
BASELINE_COMMAND = ("PYTHONPATH=.:scripts:functions/generate .venv/bin/python -m "
                    "tests.support.jsonschemabench --baseline [SAMPLE]")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stored_baseline(path: str) -> dict[str, float] | None:
    """The old converter's coverage per dataset from :data:`BASELINE_FILE` if it was computed
    on this very file (same sha256), else None."""
    if not BASELINE_FILE.exists():
        return None
    data = json.loads(BASELINE_FILE.read_text())
    if data["sha256"] != sha256_of(path):
        return None
    return {ds: covered / total for ds, (covered, total) in data["coverage"].items()}


def check_file(path: str, tokenizer, engine_view=None) -> Result:
    """Every schema of ``path`` through the engine (a fresh compiler: no cache across runs).
    ``engine_view(schema)``: what the engine is given instead of the schema (a negative
    control: an engine that drops a keyword); instances are still judged by the schema."""
    compiler = constraint.Compiler(tokenizer, cache_size=1, timeout_s=10.0)
    res = Result()
    try:
        for row in read(path):
            _check_row(row, compiler, tokenizer, res, engine_view)
    finally:
        compiler.close()
    return res


def _check_row(row: dict, compiler, tokenizer, res: Result, engine_view=None) -> None:
    ds, name, schema = row["dataset"], row["name"], row["schema"]
    res.schemas[ds] += 1
    try:
        grammar = compiler.compile(engine_view(schema) if engine_view else schema,
                                   "response_format")
    except InvalidRequest as err:
        res.refused[ds].append((name, err.message))
        return
    ok = True
    validator = grammar.validator if engine_view is None else schema_rules.validator(schema)
    for test in row["tests"]:
        text = canonical(test["data"])
        try:
            truth = validator.is_valid(test["data"])
        except Exception as err:  # jsonschema cannot decide (e.g. a remote $ref)
            truth = f"jsonschema failed: {type(err).__name__}"
        if truth != test["valid"]:
            res.disagree.append((ds, name, text[:200], truth, test["valid"]))
            continue
        took, why = accepts(tokenizer, grammar.matcher(), text)
        if test["valid"]:
            res.valid_tested += 1
            if not took and reordered(tokenizer, grammar.matcher(), test["data"]):
                res.key_order.append((ds, name, text[:200]))
            elif not took:
                ok = False
                res.over.append((ds, name, text[:200], why))
        elif took:
            ok = False
            res.under.append((ds, name, text[:300]))
    if ok:
        res.covered[ds] += 1


def report(res: Result, baseline: dict | None = None) -> str:
    """Coverage per dataset beside the paper's figures (and ``baseline``'s, if given)."""
    lines = [f"{'dataset':24} {'schemas':>7} {'covered':>7} {'ours':>6} {'baseline':>8} "
             f"{'guidance':>8} {'llama.cpp':>9} {'xgrammar':>8}"]
    for ds in sorted(res.schemas):
        paper = PAPER.get(ds, {})
        cells = [f"{paper[k]:.0%}" if k in paper else "-" for k in
                 ("guidance", "llama.cpp", "xgrammar")]
        base = f"{baseline[ds]:.0%}" if baseline and ds in baseline else "-"
        lines.append(f"{ds:24} {res.schemas[ds]:7} {res.covered[ds]:7} "
                     f"{res.coverage(ds):6.0%} {base:>8} {cells[0]:>8} {cells[1]:>9} "
                     f"{cells[2]:>8}")
    total = sum(res.schemas.values())
    lines.append(f"{'all':24} {total:7} {sum(res.covered.values()):7} "
                 f"{sum(res.covered.values()) / max(1, total):6.0%}")
    lines.append(f"valid instances rejected (over-constraint): {len(res.over)} of "
                 f"{res.valid_tested}, besides {len(res.key_order)} taken once their keys are "
                 f"in the schema's order; invalid accepted: {len(res.under)}; set aside "
                 f"(file and jsonschema disagree): {len(res.disagree)}")
    return "\n".join(lines)


def _smol_vocab_and_tokenizer():
    """SmolLM2's llama.cpp vocabulary (no weights) and llguidance's tokenizer of it, as the
    tests' fixtures build them (functions/generate/tests/conftest.py)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from llmfn.llama_backend import ensure_cpu_backend
    from scripts.model_files import smollm2_path

    ensure_cpu_backend()
    params = internals.LlamaModel.default_params()
    params.vocab_only = True
    model = internals.LlamaModel(path_model=str(smollm2_path()), params=params, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return model, vocab, constraint.tokenizer_from_vocab(vocab, eog)


def main(argv: list[str] | None = None) -> None:
    """``--baseline [SAMPLE]``: compute the old converter's coverage of SAMPLE (default: the
    shared sample) and write :data:`BASELINE_FILE` with the sample's sha256."""
    import argparse
    from importlib.metadata import version
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--baseline", action="store_true", required=True)
    parser.add_argument("sample", nargs="?", default=str(
        Path(__file__).resolve().parents[3] / "shared" / "jsonschemabench" /
        "sample.jsonl.xz"))
    args = parser.parse_args(argv)
    model, vocab, tokenizer = _smol_vocab_and_tokenizer()
    counts = old_converter_counts(args.sample, vocab, tokenizer.tokenize_str)
    model.close()
    BASELINE_FILE.parent.mkdir(parents=True, exist_ok=True)
    BASELINE_FILE.write_text(json.dumps({
        "what": "coverage per dataset [covered, schemas] of generate's converter before "
                "issue 22 (keyword check, llama-cpp-python's json_schema_to_gbnf, llama.cpp's "
                "grammar sampler), token by token with SmolLM2's tokenizer; generated, do not "
                "edit",
        "command": BASELINE_COMMAND,
        "sample": Path(args.sample).name, "sha256": sha256_of(args.sample),
        "llama_cpp_python": version("llama_cpp_python"),
        "coverage": dict(sorted(counts.items()))}, indent=1) + "\n")
    print(f"wrote {BASELINE_FILE}")
    for ds, (covered, total) in sorted(counts.items()):
        print(f"{ds:24} {covered:4}/{total:<4} {covered / total:5.0%}")


if __name__ == "__main__":
    main()
