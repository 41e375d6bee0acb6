"""Schemas compiled into llguidance matchers: the token masks of structured outputs.

A request thread compiles its schema (:meth:`Compiler.compile`, after schema_rules.check):
llguidance builds a grammar, then a matcher whose lexer covers the whole vocabulary. That runs
on a worker thread with a time limit (``COMPILE_TIMEOUT_S``): past it the request is a 400 and
no slot waits for it, so one hostile schema cannot stall the scheduler. Compiled grammars are
kept by schema hash in a bounded LRU. Each generation gets its own copy of the matcher; the
scheduler asks it for the mask of the slot's logits row before sampling and feeds it the
sampled token (scheduler.py).

The output is compact JSON: no whitespace between tokens (``whitespace_flexible`` off), ``,``
and ``:`` as separators, the serialization ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False)`` gives. A model cannot run away in whitespace inside the answer.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import llguidance
import numpy as np

from llmfn.errors import InvalidRequest

from . import schema_rules

if TYPE_CHECKING:  # a TypedDict of llguidance's stub only
    from llguidance._lib import JsonCompileOptions

COMPILE_TIMEOUT_S = 1.0  # past it: 400 (the compile goes on in the background, bounded)
CACHE_SIZE = 64  # compiled grammars kept, least recently used dropped
COMPILE_THREADS = 2  # at most this many compiles at once; more wait, then time out
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ",",
                                    "key_separator": ":", "coerce_one_of": False, "lenient": False}
SEPARATORS = (",", ":")  # the compact JSON the engine emits (the conformance test's too)


def tokenizer_from_vocab(vocab, eog_tokens: list[int]) -> llguidance.LLTokenizer:
    """llguidance's tokenizer of a llama.cpp vocabulary (about 1 s: build once per model).
    Every end-of-generation token ends the output, and only where the JSON is complete.
    As ``llguidance.llamacpp.lltokenizer_from_vocab`` (which calls a llama.cpp function
    llama-cpp-python deprecates, one warning per token): each token's bytes, control tokens
    marked with a 0xFF prefix so no JSON text can be made of them."""
    import ctypes

    import llama_cpp
    buf = ctypes.create_string_buffer(16 * 1024)
    tokens = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf) - 1, 0, True)
        if n < 0:
            raise ValueError(f"token {token} is longer than {len(buf) - 1} bytes")
        piece = buf.raw[:n]
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<")
                and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    # llguidance's stub lacks from_llamacpp (its own llamacpp.py ignores the same error)
    return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=eog_tokens, slices=None)


class Grammar:
    """One compiled schema: a matcher to copy per generation, and the validator of its
    answers (the post-decode safety net)."""

    def __init__(self, key: str, schema, matcher: llguidance.LLMatcher):
        self.key, self.schema, self._template = key, schema, matcher
        self.validator = schema_rules.validator(schema)

    def matcher(self) -> llguidance.LLMatcher:
        return self._template.deep_copy()

    def violation(self, text: str) -> str | None:
        """Why ``text`` is not valid JSON against the schema, or None if it is."""
        try:
            doc = json.loads(text)
        except ValueError as err:
            return f"not JSON: {err}"
        error = next(iter(self.validator.iter_errors(doc)), None)
        if error is None:
            return None
        return f"{error.message[:200]} at #{''.join('/' + str(p) for p in error.path)}"


def compile_matcher(tokenizer, schema) -> llguidance.LLMatcher:
    """The engine's matcher of ``schema`` (slow part of a compile); ValueError if it refuses."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(tighten_formats(disjoint_one_of(_as_object(schema)))),
        overrides=JSON_OPTIONS)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(matcher.get_error())
    return matcher


# Where the engine's format is looser than jsonschema's checker (found by random walks over
# its masks, test_structured_conformance.py): a pattern narrows it. Its date-time and time
# take second 60 at any minute; rfc3339-validator does not.
FORMAT_PATTERNS = {"date-time": "^[^Tt]*[Tt][0-9]{2}:[0-9]{2}:[0-5]",
                   "time": "^[0-9]{2}:[0-9]{2}:[0-5]"}


def tighten_formats(node):
    """``schema`` with :data:`FORMAT_PATTERNS` added beside the formats they narrow."""
    if isinstance(node, list):
        return [tighten_formats(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: tighten_formats(v) for k, v in node.items()}
    fmt = out.get("format")
    extra = FORMAT_PATTERNS.get(fmt) if isinstance(fmt, str) else None
    if extra is not None and "pattern" not in out:
        out["pattern"] = extra
    elif extra is not None:
        out["allOf"] = list(out.get("allOf", [])) + [{"pattern": extra}]
    return out


def disjoint_one_of(node):
    """``schema`` with each ``oneOf`` of object branches told apart by ``required`` made
    exact: branch i also forbids one property that each other branch requires (and i does
    not), so an object matching branch i cannot match another one, and the ``oneOf`` is an
    ``anyOf`` of the narrowed branches. Narrower than JSON Schema's oneOf (an object with
    such a property and a branch's other requirements unmet is refused: over-constraint,
    never under). Any other ``oneOf`` is left to the engine, which refuses overlapping ones."""
    if isinstance(node, list):
        return [disjoint_one_of(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: disjoint_one_of(v) for k, v in node.items()}
    branches = out.get("oneOf")
    if isinstance(branches, list) and len(branches) > 1 and all(
            isinstance(b, dict) and isinstance(b.get("required"), list) and b["required"]
            for b in branches) and (out.get("type") == "object" or all(
                b.get("type") == "object" for b in branches)):
        narrowed = []
        for i, branch in enumerate(branches):
            mine = set(branch["required"])
            banned = [next((k for k in other["required"] if k not in mine), None)
                      for j, other in enumerate(branches) if j != i]
            if None in banned:  # another branch requires only what this one does
                return out
            props = dict(branch.get("properties", {})) if isinstance(
                branch.get("properties", {}), dict) else None
            if props is None:
                return out
            props.update({k: False for k in banned})
            narrowed.append({**branch, "type": "object", "properties": props})
        del out["oneOf"]
        if "anyOf" in out:  # both must hold: keep the schema's anyOf beside ours
            out["allOf"] = list(out.get("allOf", [])) + [{"anyOf": narrowed}]
        else:
            out["anyOf"] = narrowed
    return out


def _as_object(schema):
    """llguidance takes object schemas only: ``true`` is ``{}``, ``false`` nothing."""
    if schema is True:
        return {}
    if schema is False:
        return {"not": {}}
    return schema


class Compiler:
    """Compiles schemas for one tokenizer: a bounded LRU by schema hash, compiles off the
    scheduler thread, each within ``timeout_s``."""

    def __init__(self, tokenizer, *, cache_size: int = CACHE_SIZE,
                 timeout_s: float = COMPILE_TIMEOUT_S):
        self.tokenizer, self.timeout_s, self.cache_size = tokenizer, timeout_s, cache_size
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="grammar-compile")
        self.compiles = 0  # compiles run (tests see the cache work)

    def compile(self, schema, param: str) -> Grammar:
        """The grammar of ``schema`` (checked by schema_rules first); 400 naming ``param``
        if it asks for what is not enforced, the engine refuses it, or it takes too long."""
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        with self._lock:
            grammar = self._cache.get(key)
            if grammar is not None:
                self._cache.move_to_end(key)
                return grammar
        schema_rules.check(schema, param)
        future = self._pool.submit(compile_matcher, self.tokenizer, schema)
        try:
            matcher = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise InvalidRequest(f"'{param}': the schema took longer than {self.timeout_s:g} s "
                                 "to compile; simplify it.", param=param) from None
        except ValueError as err:
            raise InvalidRequest(f"'{param}' cannot be enforced: {_engine_reason(err, schema)}",
                                 param=param) from None
        grammar = Grammar(key, schema, matcher)
        with self._lock:
            self.compiles += 1
            self._cache[key] = grammar
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return grammar

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _engine_reason(err: ValueError, schema) -> str:
    """The engine's refusal, with the JSON pointers of the keyword it names (oneOf whose
    branches may overlap: enforcing it as anyOf would let a two-branch match through)."""
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else "refused"
    for fragment, keyword in (("oneOf", "oneOf"), ("min/maxProperties", "minProperties"),
                              ("min/maxProperties", "maxProperties")):
        if fragment in text:
            where = _pointers(schema, keyword)
            if where:
                text += f" ('{keyword}' at {', '.join(where[:3])})"
    return text


def _pointers(schema, keyword: str, path: str = "#", out: list | None = None) -> list[str]:
    out = [] if out is None else out
    if isinstance(schema, dict):
        for key, value in schema.items():
            where = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key == keyword:
                out.append(where)
            _pointers(value, keyword, where, out)
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            _pointers(value, keyword, f"{path}/{i}", out)
    return out


def apply_mask(matcher: llguidance.LLMatcher, row: np.ndarray) -> None:
    """Set the logits the matcher forbids next to -inf, in place (``row`` is the context's
    logits row of the slot: the sampler then only sees allowed tokens)."""
    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    allowed = np.unpackbits(bits, bitorder="little")[:row.shape[0]]
    row[allowed == 0] = -np.inf
