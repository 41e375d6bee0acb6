"""JSONSchemaBench without a model: every schema is refused (reason kept) or its masks take
every valid instance and no invalid one, token by token with SmolLM2's tokenizer.

The file is ``STRUCTURED_BENCH`` (JSONL, optionally .xz, the sample's format), by default
../shared/jsonschemabench/sample.jsonl.xz. The canonical serialization of an instance is
``json.dumps(data, separators=(",", ":"), ensure_ascii=False)``: the compact JSON the engine
writes (constraint.SEPARATORS). A valid instance rejected only because its object keys are in
another order than the schema's (the engine writes properties in the schema's order, as
llama.cpp's converter and XGrammar do) is counted apart: accepted once reordered.

Coverage per dataset must be at least that of generate's converter before issue 22 (GBNF),
read from tests/data/gbnf_coverage.json, which records the sha256 of the sample it was computed
on: the default sample must match it (else regenerate the file with the command it records);
another file given by ``STRUCTURED_BENCH`` gets that baseline computed here (slow).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from function import constraint, schema_rules
from tests.support import jsonschemabench as bench

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BENCH = ROOT.parent / "shared" / "jsonschemabench" / "sample.jsonl.xz"
BENCH = Path(os.environ.get("STRUCTURED_BENCH", DEFAULT_BENCH))
MIN_COVERAGE = {"Github_hard": 0.41, "Glaiveai2K": 0.86}  # the paper's (../shared README)
MAX_OVER = 0.01  # valid instances rejected, besides key order


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer):
    return smol_tokenizer


@pytest.mark.skipif(not BENCH.exists(), reason=f"{BENCH} is not there")
def test_every_schema_is_refused_or_followed_exactly(tokenizer, request):
    baseline = bench.stored_baseline(str(BENCH))
    if baseline is None:  # a file it was not computed on: stale for the default sample
        assert BENCH != DEFAULT_BENCH, (
            f"{bench.BASELINE_FILE} was not computed on {BENCH} (sha256 "
            f"{bench.sha256_of(str(BENCH))}): regenerate it with {bench.BASELINE_COMMAND}")
        counts = bench.old_converter_counts(str(BENCH), request.getfixturevalue("smol_vocab"),
                                            tokenizer.tokenize_str)
        baseline = {ds: covered / total for ds, (covered, total) in counts.items()}
    res = bench.check_file(str(BENCH), tokenizer)
    print("\n" + bench.report(res, baseline))
    for ds, name, text in res.under:
        print(f"UNDER-CONSTRAINT {ds}/{name}: {text}")
    for ds, name, text, why in res.over:
        print(f"OVER-CONSTRAINT {ds}/{name}: {why}: {text[:120]}")
    assert not res.under, f"{len(res.under)} invalid instances accepted: {res.under[:3]}"
    assert len(res.over) <= MAX_OVER * res.valid_tested, \
        f"{len(res.over)} of {res.valid_tested} valid instances rejected"
    for ds in res.schemas:
        assert res.coverage(ds) >= baseline[ds], (ds, res.coverage(ds), baseline[ds])
        assert res.coverage(ds) >= MIN_COVERAGE.get(ds, 0.0), (ds, res.coverage(ds))


def test_a_dropped_bound_would_be_caught(tokenizer, tmp_path):
    """Negative control: the bench check catches an engine that drops ``maximum`` (as
    llama-cpp-python's converter did), so the main test can fail."""
    row = {"dataset": "control", "name": "legs", "schema": {
        "type": "object", "properties": {"legs": {"type": "integer", "minimum": 0,
                                                  "maximum": 8}},
        "required": ["legs"], "additionalProperties": False},
        "tests": [{"description": "ok", "valid": True, "data": {"legs": 4}},
                  {"description": "too many", "valid": False, "data": {"legs": 10}}]}
    path = tmp_path / "control.jsonl"
    path.write_text(bench.json.dumps(row) + "\n")
    res = bench.check_file(str(path), tokenizer)
    assert res.under == [] and res.covered["control"] == 1

    def drop_maximum(schema):
        legs = {k: v for k, v in schema["properties"]["legs"].items() if k != "maximum"}
        return {**schema, "properties": {"legs": legs}}

    res = bench.check_file(str(path), tokenizer, engine_view=drop_maximum)
    assert [(ds, name) for ds, name, _ in res.under] == [("control", "legs")]


def test_every_enforced_format_has_a_checker_and_the_masks_obey_it(tokenizer):
    """Each format the engine enforces is checked by jsonschema's FORMAT_CHECKER, and random
    strings drawn from the engine's masks all pass that checker."""
    import json
    import random
    checker = schema_rules.validator({}).FORMAT_CHECKER
    assert schema_rules.ENGINE_FORMATS <= set(checker.checkers), \
        schema_rules.ENGINE_FORMATS - set(checker.checkers)
    rng = random.Random(22)
    compiler = constraint.Compiler(tokenizer)
    for fmt in sorted(schema_rules.ENGINE_FORMATS):
        grammar = compiler.compile({"type": "string", "format": fmt}, "x")
        texts = [bench.random_walk(tokenizer, grammar.matcher(), rng, max_tokens=100)
                 for _ in range(40)]
        texts = [t for t in texts if t is not None]
        assert texts, f"no random {fmt} ended: nothing was checked"
        bad = [t for t in texts if not checker.conforms(json.loads(t), fmt)]
        assert bad == [], (fmt, bad[:3])
    compiler.close()


def test_strings_exclude_raw_control_characters_and_whitespace_between_tokens(tokenizer):
    """JSON forbids raw control characters in strings; the engine writes compact JSON (no
    whitespace between tokens, so an answer cannot run away in blanks)."""
    grammar = constraint.Compiler(tokenizer).compile(
        {"type": "object", "properties": {"s": {"type": "string"}}}, "x")
    assert bench.accepts(tokenizer, grammar.matcher(), bench.canonical({"s": "a\u0001"}))[0]
    assert not bench.accepts(tokenizer, grammar.matcher(), '{"s":"a\u0001"}')[0]
    assert not bench.accepts(tokenizer, grammar.matcher(), '{"s": "a"}')[0]
    assert not bench.accepts(tokenizer, grammar.matcher(), '{ "s":"a"}')[0]
    assert bench.accepts(tokenizer, grammar.matcher(), '{"s":"a"}')[0]
