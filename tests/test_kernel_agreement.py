"""llama.cpp's CPU kernel paths agree within LOGIT_TOLERANCE, and the clear prompts stay clear.

The same prompt evaluated in one batch or one token per llama_decode, with flash attention on
or off, must give prompt-end logits within the tolerance of scripts/kernel_noise.py and
the same top-1 token wherever the answer is not a near tie. Tests that assert exact model
text rely on this (issue 9 §1). A changed prompt token must exceed the tolerance: the
comparison can fail. `make test-cpu-variants` runs this module once per CPU variant of the
portable build (LLMFN_CPU_VARIANT selects it; unset: whatever this interpreter's llama_cpp has).
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from scripts import kernel_noise as kn
from tests.support.models import model_file

VARIANT = os.environ.get("LLMFN_CPU_VARIANT")  # one libggml-cpu-<variant>.so of the portable build
REPORT = os.environ.get("LLMFN_KERNEL_REPORT")  # where make test-cpu-variants wants the numbers
PAIRS = list(itertools.combinations(kn.PROMPT_PATHS, 2))
NEED = kn.CLEAR_FACTOR * kn.LOGIT_TOLERANCE


@pytest.fixture(scope="module")
def variant():
    """The CPU variant this module runs on, loaded before any model (skipped if this CPU lacks
    an instruction the variant was built for)."""
    if VARIANT:
        path = kn.cpu_variants().get(VARIANT)
        if path is not None and kn.variant_score(path) == 0:
            pytest.skip(f"this CPU cannot run the {VARIANT} variant (ggml_backend_score 0)")
        kn.load_cpu_variant(VARIANT)
    return VARIANT or "default"


@pytest.fixture(scope="module")
def model(variant):
    """SmolLM2-135M-Instruct with one context per flash-attention setting."""
    m = kn.Evaluator(kn.smollm2_path())
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompt_logits(model, variant):
    """Prompt-end logits of every NOISE_PROMPTS entry along each of the 4 paths."""
    out = {e.name: {p: model.logits(model.tokens_of(e), p)[0] for p in kn.PROMPT_PATHS}
           for e in kn.NOISE_PROMPTS}
    yield out
    if REPORT:
        _write_report(out, variant)


def disagreements(logits: dict[kn.KernelPath, np.ndarray]) -> list[str]:
    """Every way two paths' logits of one prompt differ by more than the tolerances allow."""
    problems = []
    for a, b in PAIRS:
        top, vocab = kn.deltas(logits[a], logits[b])
        if top > kn.LOGIT_TOLERANCE:
            problems.append(f"{a.name} vs {b.name}: top-40 |Δlogit| {top:.3f}")
        if vocab > kn.VOCAB_TOLERANCE:
            problems.append(f"{a.name} vs {b.name}: vocabulary |Δlogit| {vocab:.3f}")
        margin = kn.top1_margin(logits[a])
        if margin > kn.LOGIT_TOLERANCE and np.argmax(logits[a]) != np.argmax(logits[b]):
            problems.append(f"{a.name} vs {b.name}: top-1 differs at margin {margin:.2f}")
    return problems


@pytest.mark.parametrize("entry", kn.NOISE_PROMPTS, ids=lambda e: e.name)
def test_batched_and_token_by_token_agree_with_fa_on_and_off(prompt_logits, entry):
    assert not disagreements(prompt_logits[entry.name])


def test_one_changed_token_exceeds_the_tolerance(model, prompt_logits):
    """Negative control: the same comparison on a prompt with one token changed fails."""
    for entry in kn.NOISE_PROMPTS[:1] + kn.NOISE_PROMPTS[12:13]:  # France, chat and plain
        _, changed = kn.last_word_changed(model, model.tokens_of(entry))
        logits = dict(prompt_logits[entry.name])
        logits[kn.PROMPT_PATHS[1]] = model.logits(changed, kn.PROMPT_PATHS[1])[0]
        top, _ = kn.deltas(logits[kn.PROMPT_PATHS[0]], logits[kn.PROMPT_PATHS[1]])
        assert top > NEED  # measured 16.8 and 23.2: far outside the noise
        assert disagreements(logits)


@pytest.mark.parametrize("entry", kn.CLEAR_PROMPTS, ids=lambda e: e.name)
def test_clear_prompts_are_clear_on_every_path(model, entry):
    """Each CLEAR_PROMPTS answer is the greedy text and leads by >= 3x the tolerance at every
    step, on every path (generate's prefill, all batched, all per token; fa on and off)."""
    tokens = model.tokens_of(entry)
    answer = model.greedy(tokens, entry.tokens)
    assert model.text(answer) == entry.expected
    margin, per_path = kn.answer_margin(model, tokens, answer)
    assert margin >= NEED, per_path


@pytest.fixture(scope="module")
def tiny(variant):
    m = kn.Evaluator(model_file("tiny-llama.gguf", "make_tiny_model.py"), n_ctx=256)
    yield m
    m.close()


@pytest.mark.parametrize("entry", kn.TINY_CLEAR_PROMPTS, ids=lambda e: e.name)
def test_tiny_clear_prompts_are_clear_on_every_path(tiny, entry):
    answer = tiny.greedy(entry.prompt_tokens, entry.tokens)
    assert answer == entry.expected_tokens and tiny.text(answer) == entry.expected
    margin, per_path = kn.answer_margin(tiny, entry.prompt_tokens, answer)
    assert margin >= kn.CLEAR_FACTOR * kn.TINY_LOGIT_TOLERANCE, per_path


def _write_report(logits: dict, variant: str) -> None:
    """The largest |Δlogit| per path pair, and the batched prompt-end logits (to compare
    variants with each other), for make test-cpu-variants."""
    pairs = {f"{a.name} vs {b.name}": [max(kn.deltas(lg[a], lg[b])[i] for lg in logits.values())
                                       for i in (0, 1)] for a, b in PAIRS}
    with open(REPORT, "w") as f:
        json.dump({"variant": variant, "pairs": pairs}, f)
    np.savez_compressed(REPORT + ".npz", **{f"{name}|{p.name}": lg[p]
                                            for name, lg in logits.items()
                                            for p in kn.PROMPT_PATHS if p.mode == "batch"})
