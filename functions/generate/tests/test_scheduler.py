"""The slot scheduler (continuous batching) on the real tiny model and on SmolLM2-135M.

Correct under concurrency: concurrent streams each get their own answer (prompts whose greedy
answer has a clear top-1 margin, scripts/kernel_noise.py, so batch composition cannot
flip them); a request alone equals llama-cpp-python's high-level ``Llama``; the prompt-end
logits of a batched stream stay within the measured kernel-noise tolerance of the same prompt
alone. Every concurrency test also proves that batching happened (peak busy slots and the
most sequences in one ``llama_decode``), so a scheduler running one request at a time fails.
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from function.engine import Params, load_engine, pick_greedy
from function.scheduler import WAKE_S, Generation, Scheduler, Text
from function.settings import GenerateSettings
from llmfn.cpu_share import FreeCpus
from llmfn.errors import QueueFull
from llmfn.settings import ModelSettings, SettingsError
from llmfn.sizing import MAX_AUTO_SLOTS
from scripts.kernel_noise import (
    CLEAR_PROMPTS,
    LOGIT_TOLERANCE,
    TINY_CLEAR_PROMPTS,
    TINY_LOGIT_TOLERANCE,
    VOCAB_TOLERANCE,
    deltas,
)
from scripts.model_files import smollm2_path

WAIT_S = 120.0
SLOTS = 4


def engine_for(path: Path, slots: int, n_ctx: int, threads: int = 2):
    return load_engine(str(path), ModelSettings(n_ctx=n_ctx, n_threads=threads),
                       gen=GenerateSettings(slots=slots))


@pytest.fixture(scope="module")
def smol():
    engine = engine_for(smollm2_path(), SLOTS, 512)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny(tiny_model):
    engine = engine_for(tiny_model, SLOTS, 256, threads=1)
    yield engine
    engine.close()


@pytest.fixture
def scheduler_of():
    made = []

    def make(engine, slots=SLOTS, queue_size=16, deadline_s=0.0):
        s = Scheduler(lambda: engine, slots, queue_size=queue_size, deadline_s=deadline_s)
        made.append(s)
        return s

    yield make
    for s in made:
        assert s.drain(WAIT_S)
        s.close()


def tokens_of(engine, entry) -> list[int]:
    """Prompt tokens of a clear prompt, as the API makes them (chat, plain text or token ids)."""
    if hasattr(entry, "prompt_tokens"):
        return list(entry.prompt_tokens)
    if entry.messages is not None:
        return engine.tokenize_chat(entry.messages)[0]
    return engine.tokenize_prompt(entry.prompt)


def greedy(tokens, n: int, *, logits: bool = False) -> Generation:
    gen = Generation(tokens, Params(max_tokens=n, temperature=0.0))
    gen.capture_logits = logits
    return gen


def run_together(scheduler, gens):
    """Submit every generation at once, then wait for all (one thread, no client pacing)."""
    for g in gens:
        scheduler.submit(g)
    return [g.wait(WAIT_S) for g in gens]


def test_concurrent_streams_get_their_own_clear_answers(smol, scheduler_of):
    """Twice as many clear-margin prompts as slots at once: every answer is its own; slots
    were all busy together and decode batches held several sequences."""
    assert len(CLEAR_PROMPTS) >= SLOTS
    scheduler = scheduler_of(smol)
    entries = (CLEAR_PROMPTS * 2)[:2 * SLOTS]
    gens = [greedy(tokens_of(smol, e), e.tokens) for e in entries]
    outcomes = run_together(scheduler, gens)
    for entry, out in zip(entries, outcomes):
        assert out.text.startswith(entry.expected), (entry.name, out.text)
    assert scheduler.peak_busy == SLOTS
    assert scheduler.max_batch_seqs >= 2


def test_alone_equals_high_level_llama(smol, scheduler_of):
    """At temperature 0 a request alone gives the tokens of llama-cpp-python's ``Llama``."""
    llm = llama_cpp.Llama(model_path=str(smollm2_path()), n_ctx=512, n_threads=2,
                          flash_attn=smol.flash_attn,
                          verbose=False)
    try:
        scheduler = scheduler_of(smol)
        for entry in CLEAR_PROMPTS:
            tokens = tokens_of(smol, entry)
            ours = scheduler.submit(greedy(tokens, entry.tokens)).wait(WAIT_S).text
            theirs = []
            for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
                if llm._model.token_eos() == token or len(theirs) == entry.tokens:
                    break
                theirs.append(token)
            assert ours == llm.detokenize(theirs).decode("utf-8", "replace"), entry.name
            assert ours.startswith(entry.expected)
    finally:
        llm.close()


def test_batched_prompt_logits_within_tolerance_of_alone(smol, scheduler_of):
    entries = CLEAR_PROMPTS[:SLOTS]
    alone = []
    for entry in entries:
        scheduler = scheduler_of(smol)  # a fresh scheduler (empty KV): no prefix reuse
        gen = scheduler.submit(greedy(tokens_of(smol, entry), 1, logits=True))
        gen.wait(WAIT_S)
        alone.append(gen.prompt_logits)
    scheduler = scheduler_of(smol)
    gens = [greedy(tokens_of(smol, e), 1, logits=True) for e in entries]
    run_together(scheduler, gens)
    assert scheduler.max_batch_seqs >= 2
    for entry, ref, gen in zip(entries, alone, gens):
        top, vocab = deltas(gen.prompt_logits, ref)
        assert top <= LOGIT_TOLERANCE and vocab <= VOCAB_TOLERANCE, (entry.name, top, vocab)


def chain_pick(chain, row: np.ndarray) -> int:
    """The token a llama.cpp sampler chain selects from ``row`` (what ``llama_sampler_sample``
    does with the context's row: a candidate per token, apply, the selected one)."""
    data = (llama_cpp.llama_token_data * len(row))(
        *(llama_cpp.llama_token_data(i, float(x), 0.0) for i, x in enumerate(row)))
    cur = llama_cpp.llama_token_data_array(data, len(row), -1, False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
    return data[cur.selected].id


def test_greedy_argmax_picks_what_the_sampler_chain_picks(smol, scheduler_of):
    """Greedy requests skip the sampler chain (pick_greedy: bias, then the first highest
    logit). On real prompt-end rows, with no bias, ignore_eos, a bias that lifts the 5th best
    token to the top, one that sinks the best, and a tie for the top, both give one token."""
    scheduler = scheduler_of(smol)
    rows = []
    for entry in CLEAR_PROMPTS[:3]:
        gen = scheduler.submit(greedy(tokens_of(smol, entry), 1, logits=True))
        gen.wait(WAIT_S)
        rows.append(gen.prompt_logits)
    for row in rows:
        order = np.argsort(row)[::-1]
        tie = row.copy()
        tie[order[3]] = tie[order[0]]  # a later or earlier index with the same top logit
        cases = [(row, {}, False), (row, {}, True), (row, {int(order[4]): 100.0}, False),
                 (row, {int(order[0]): -100.0, int(order[2]): 0.5}, False), (tie, {}, False)]
        for logits, bias, ignore_eos in cases:
            params = Params(max_tokens=1, temperature=0.0, logit_bias=bias,
                            ignore_eos=ignore_eos)
            fast = smol.greedy_bias(params)
            assert fast is not None
            chain = smol.new_sampler(params, 0)
            try:
                assert pick_greedy(logits.copy(), fast) == chain_pick(chain, logits), bias
            finally:
                llama_cpp.llama_sampler_free(chain)
    assert smol.greedy_bias(Params(max_tokens=1, temperature=0.7)) is None
    assert smol.greedy_bias(Params(max_tokens=1, temperature=0.0, presence_penalty=1.0)) is None


def test_tiny_streams_batched_equal_alone(tiny, scheduler_of):
    """The tiny model's clear prompts: each alone, then all together, give the same text."""
    assert len(TINY_CLEAR_PROMPTS) >= 2
    alone = []
    for entry in TINY_CLEAR_PROMPTS:
        scheduler = scheduler_of(tiny)
        alone.append(scheduler.submit(greedy(tokens_of(tiny, entry), entry.tokens))
                     .wait(WAIT_S).text)
    scheduler = scheduler_of(tiny)
    gens = [greedy(tokens_of(tiny, e), e.tokens) for e in TINY_CLEAR_PROMPTS]
    outcomes = run_together(scheduler, gens)
    assert [o.text for o in outcomes] == alone
    assert [o.text.startswith(e.expected) for o, e in zip(outcomes, TINY_CLEAR_PROMPTS)] == \
        [True] * len(outcomes)
    assert scheduler.peak_busy >= min(SLOTS, len(TINY_CLEAR_PROMPTS))
    assert scheduler.max_batch_seqs >= 2


def tap(gen: Generation, on_put) -> Generation:
    """Call ``on_put(item)`` on the scheduler's thread after each event of ``gen``."""
    put = gen.events.put

    def tapped(item, *a, **k):
        put(item, *a, **k)
        on_put(item)

    gen.events.put = tapped
    return gen


def cancel_at(gen: Generation, n: int) -> Generation:
    """``gen``, cancelled on the scheduler's thread when its Nth piece of text arrives."""
    texts = []

    def on_put(item):
        if isinstance(item, Text):
            texts.append(item)
            if len(texts) == n:
                gen.cancel()

    return tap(gen, on_put)


def test_cancel_stops_that_slot_within_one_token_and_no_other(tiny, scheduler_of):
    scheduler = scheduler_of(tiny)
    tokens = tiny.tokenize_prompt("x")
    others = [Generation(tokens, Params(max_tokens=150, seed=i)) for i in range(SLOTS - 1)]
    victim = cancel_at(Generation(tokens, Params(max_tokens=150)), 3)
    outcomes = run_together(scheduler, [victim, *others])
    assert outcomes[0].finish_reason == "cancelled" and outcomes[0].completion_tokens == 3
    assert [(o.finish_reason, o.completion_tokens) for o in outcomes[1:]] == \
        [("length", 150)] * (SLOTS - 1)
    assert scheduler.peak_busy == SLOTS


def test_generated_kv_is_dropped_and_the_prompt_kept_for_reuse(tiny, scheduler_of):
    """After a request only its prompt's KV stays in its slot; a follow-up sharing that
    prefix gets the slot and processes only the new tokens, with the same prompt-end logits
    as on a cold cache."""
    scheduler = scheduler_of(tiny)
    first = tiny.tokenize_prompt("the first turn of a chat")
    gen = scheduler.submit(greedy(first, 20))
    assert gen.wait(WAIT_S).completion_tokens == 20
    memory = llama_cpp.llama_get_memory(tiny.ctx)
    slot = next(s for s in scheduler.slots if s.cache)
    assert slot.cache == first
    assert llama_cpp.llama_memory_seq_pos_max(memory, slot.seq) == len(first) - 1
    follow = first + tiny.tokenize_prompt(" and the second")[1:]
    reused = scheduler.submit(greedy(follow, 1, logits=True))
    reused.wait(WAIT_S)
    assert scheduler.reused_tokens == len(first)
    fresh_scheduler = scheduler_of(tiny)
    fresh = fresh_scheduler.submit(greedy(follow, 1, logits=True))
    fresh.wait(WAIT_S)
    assert fresh_scheduler.reused_tokens == 0
    # the tiny model's own kernel noise bound (scripts/kernel_noise.py)
    assert float(np.max(np.abs(reused.prompt_logits - fresh.prompt_logits))) <= \
        TINY_LOGIT_TOLERANCE


def test_long_prompt_is_chunked_and_does_not_stall_decoding(tiny_model, scheduler_of):
    """N_BATCH 32: a 200-token prompt takes seven steps, and the stream admitted with it gets
    a token in every one of them (its text arrives before the long prompt's first token)."""
    engine = load_engine(str(tiny_model), ModelSettings(n_ctx=256, n_threads=1, n_batch=32,
                                                        n_ubatch=32),
                         gen=GenerateSettings(slots=2))
    try:
        scheduler = scheduler_of(engine, slots=2)
        order: list[str] = []
        runner = tap(Generation(engine.tokenize_prompt("x"), Params(max_tokens=50, seed=1)),
                     lambda item: order.append("runner"))
        long_prompt = [int(t) for t in np.random.default_rng(0).integers(3, engine.n_vocab, 200)]
        late = tap(Generation(long_prompt, Params(max_tokens=4)),
                   lambda item: order.append("late"))
        run_together(scheduler, [runner, late])
        assert late.outcome.completion_tokens == 4 and runner.outcome.completion_tokens == 50
        # step 1: runner's 2 prompt tokens + 30 of the long prompt; steps 2-7: one runner token
        # + 31 prompt tokens each; so >= 6 runner tokens come before the long prompt's first
        assert order.index("late") >= 6
        assert scheduler.max_batch_seqs == 2
    finally:
        engine.close()


def test_drain_finishes_every_slot(tiny, scheduler_of):
    scheduler = Scheduler(lambda: tiny, SLOTS, queue_size=4)
    gens = [scheduler.submit(Generation(tiny.tokenize_prompt("x"), Params(max_tokens=100,
                                                                           seed=i)))
            for i in range(SLOTS + 2)]
    assert scheduler.drain(WAIT_S)
    assert [g.wait(0).completion_tokens for g in gens] == [100] * (SLOTS + 2)
    scheduler.close()


def test_batch_smaller_than_slots_is_refused(tiny_model):
    with pytest.raises(SettingsError, match="N_BATCH must be >= SLOTS"):
        load_engine(str(tiny_model), ModelSettings(n_batch=2, n_ubatch=2),
                    gen=GenerateSettings(slots=4))


def test_slot_metrics_are_exported(make_runtime):
    rt = make_runtime(SLOTS=2)
    c = rt.app.test_client()
    assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).status_code == 200
    text = c.get("/metrics").get_data(as_text=True)
    assert "llmfn_slots 2.0" in text
    assert "llmfn_slots_busy 0.0" in text
    cells = float(next(line.split()[1] for line in text.splitlines()
                       if line.startswith("llmfn_kv_cells_used ")))
    assert cells == len(rt.host.model.tokenize_prompt("x"))  # the prompt's KV only
    assert "llmfn_decode_batch_sequences_count" in text



def test_deadline_ends_running_and_waiting_requests_with_length(tiny, scheduler_of):
    """REQUEST_TIMEOUT_S: a request past its deadline (counted from its t0, its arrival) ends
    at the next step with what it has, finish_reason "length" and ``deadline`` set, running
    or still waiting for a slot; a request within its deadline is untouched."""
    import time
    scheduler = scheduler_of(tiny, slots=1, deadline_s=60.0)
    tokens = tiny.tokenize_prompt("x")
    fresh = Generation(tokens, Params(max_tokens=20))
    late = Generation(tokens, Params(max_tokens=20), t0=time.perf_counter() - 61.0)
    scheduler.submit_all([fresh, late])  # one slot: `late` waits behind `fresh`
    done_fresh, done_late = fresh.wait(WAIT_S), late.wait(WAIT_S)
    assert (done_fresh.finish_reason, done_fresh.completion_tokens) == ("length", 20)
    assert not done_fresh.deadline
    assert done_late.deadline and done_late.finish_reason == "length"
    assert done_late.completion_tokens == 0
    running = Generation(tokens, Params(max_tokens=150), t0=time.perf_counter() - 61.0)
    scheduler.submit(running)
    out = running.wait(WAIT_S)
    assert out.deadline and out.finish_reason == "length" and out.completion_tokens < 150


def test_slots_from_the_engine(tiny_model):
    """SLOTS unset (0): the scheduler counts the most a derived SLOTS gives until the engine is
    loaded, then takes the engine's count, on the first request or readiness probe."""
    engine = engine_for(tiny_model, 2, 256, threads=1)
    loaded = None
    try:
        scheduler = Scheduler(lambda: engine, 0, queue_size=1, peek=lambda: loaded)
        assert scheduler.capacity == len(scheduler.slots) == MAX_AUTO_SLOTS
        assert scheduler.ready() == (True, "ready")  # not loaded yet: nothing to show
        loaded = engine
        ok, text = scheduler.ready()
        assert ok and text.startswith("ready: SLOTS 2 (SLOTS), N_THREADS 1 (N_THREADS): "), text
        assert scheduler.capacity == len(scheduler.slots) == 2
        # 2 run, 1 waits (QUEUE_SIZE), the 4th is refused: room is the engine's 2 slots
        gens = [scheduler.submit(Generation(engine.tokenize_prompt("x"),
                                            Params(max_tokens=50, seed=i))) for i in range(3)]
        with pytest.raises(QueueFull):
            scheduler.submit(Generation(engine.tokenize_prompt("x"), Params(max_tokens=1)))
        assert scheduler.drain(WAIT_S)
        assert [g.wait(0).completion_tokens for g in gens] == [50] * 3
        assert scheduler.peak_busy == 2
        scheduler.close()
    finally:
        engine.close()


def test_decode_threads_follow_the_free_cpus(smol, scheduler_of, tmp_path):
    """With ADAPTIVE_THREADS (the default) each llama_decode takes the threads FreeCpus gives:
    here a /proc/stat in which a neighbour held one of two cores, then none."""
    stat, clock = tmp_path / "stat", [0.0]

    def node(busy0: int, busy1: int) -> None:  # ticks busy of cpu0, cpu1 (idle: the rest)
        stat.write_text(f"cpu  0 0 0 0\ncpu0 {busy0} 0 0 {10**6 - busy0} 0 0 0 0\n"
                        f"cpu1 {busy1} 0 0 {10**6 - busy1} 0 0 0 0\n")

    node(0, 0)
    loadavg = tmp_path / "loadavg"  # runnable now: this thread and the neighbour
    loadavg.write_text("1.00 1.00 1.00 2/100 4242\n")
    share = FreeCpus(2, cpus={0, 1}, stat=stat, loadavg=loadavg, ours=lambda: 0.0,
                     clock=lambda: clock[0])
    clock[0] += 1.0
    node(os.sysconf("SC_CLK_TCK"), 0)  # cpu0 busy for the whole second, not by us
    assert share.update() == 1
    kept, smol.cpu_share = smol.cpu_share, share
    try:
        scheduler = scheduler_of(smol)
        entry = CLEAR_PROMPTS[0]
        out = scheduler.submit(greedy(tokens_of(smol, entry), entry.tokens)).wait(WAIT_S)
        assert out.text.startswith(entry.expected)
        assert llama_cpp.llama_n_threads(smol.ctx) == 1 == smol.threads
        assert scheduler._threads_gauge._value.get() == 1
        clock[0] += 1.0
        node(os.sysconf("SC_CLK_TCK"), 0)  # the neighbour stopped
        assert share.update() == 2
        scheduler.submit(greedy(tokens_of(smol, entry), 2)).wait(WAIT_S)
        assert llama_cpp.llama_n_threads(smol.ctx) == 2 == smol.threads
        # after idle, a neighbour seen over the last interval but gone now (one runnable task:
        # this thread) gives the threads back at once (FreeCpus.woken)
        clock[0] += 1.0
        node(2 * os.sysconf("SC_CLK_TCK"), 0)
        assert share.update() == 1
        loadavg.write_text("1.00 1.00 1.00 1/100 4242\n")
        time.sleep(2 * WAKE_S)  # the loop idles
        scheduler.submit(greedy(tokens_of(smol, entry), 2)).wait(WAIT_S)
        assert llama_cpp.llama_n_threads(smol.ctx) == 2 and share.threads() == 2
    finally:
        smol.cpu_share = kept
