"""Continuous batching: a slot scheduler on llama.cpp's batch API (the shape of llama-server's).

One context holds ``SLOTS`` sequences in a unified KV cache; the scheduler's thread owns it.
Each step is one ``llama_decode`` of one batch that holds, in this order:

1. the next token of every generating slot (one logit row each);
2. chunks of waiting prompts, oldest first, up to ``N_BATCH`` tokens in all, so a long prompt
   is split over steps and never stalls the others' decoding.

Each slot has its own sampler chain and reads the logits at its own batch index (a greedy
request without penalties takes the biased argmax of its row instead, the chain's choice
without its n_vocab candidate array: ``engine.pick_greedy``); stop strings,
end of generation (unless ``ignore_eos``: the sampler never picks an end-of-generation
token, as llama-server does), ``max_tokens`` and cancel are per slot (a client that leaves
stops its slot within one token, and no other). When a request ends, the KV of its generated
tokens is removed and its prompt's KV stays, so a later request sharing a prefix (the next turn of a
chat) is given that slot and only its new tokens are processed; ``Outcome.cached_tokens`` is
that kept prefix (usage's ``cached_tokens``, llama-server's ``n_prompt_tokens_cache``).

With ``logprobs`` a slot also reads its logits row and records, per generated token, the
model's raw log-softmax (before bias, penalties, grammar and temperature: the distribution
OpenAI documents) of the chosen token and the top ``k``; they reach the request thread as
:class:`Tokens` right before the :class:`Text` they make up.

Structured outputs (constraint.py): a slot whose request carries a compiled grammar has its
own llguidance matcher. Before its sampler samples, the tokens the matcher forbids get -inf in
the context's logits row of that slot (so bias, penalties, top-k... only see allowed tokens);
the sampled token is fed to the matcher, and the slot stops ("stop") when the matcher says
the JSON is complete. End of generation is allowed only where the JSON may end.

Admission, the wait queue and drain are llmfn's ModelLoop (shared with embed's batcher).

Deadline (``REQUEST_TIMEOUT_S``, ``deadline_s`` here): a request still generating, or still
waiting for a slot, ``deadline_s`` after it arrived (``Generation.t0``) ends at the next step
with what it has, ``finish_reason`` "length" (OpenAI's "cut short") and ``Outcome.deadline``
set (its inference event says "deadline"), so it never outlives the revision's timeouts.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmfn.errors import ShuttingDown
from llmfn.llama_batch import Batch
from llmfn.sizing import MAX_AUTO_SLOTS
from llmfn.worker import ModelLoop

from .constraint import apply_mask
from .engine import Engine, GreedyBias, Params, pick_greedy
from .text import StopScanner, decode_complete

if TYPE_CHECKING:
    from llguidance import LLMatcher

log = logging.getLogger(__name__)

SEQ_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WAKE_S = 0.05  # steps this soon after an idle loop may take back threads (FreeCpus.woken)
WAKE_CHUNK = 4  # prompt tokens of such a step while it has fewer threads than N_THREADS


@dataclass
class Outcome:
    """What one generation produced; tokens are counted as sampled."""
    completion_tokens: int = 0
    finish_reason: str = "length"
    ttft_s: float | None = None  # request start (queueing included) to the first token
    generation_s: float = 0.0  # from getting a slot to the end
    text: str = ""
    logprob_sum: float = 0.0  # of the generated tokens (with logprobs): best_of ranks by it
    tokens: list[TokenLogprob] | None = None  # with logprobs: one per token of ``text``
    deadline: bool = False  # ended by the request deadline (finish_reason "length")
    cached_tokens: int = 0  # prompt tokens whose KV the slot kept (not recomputed)
    stop_sequence: str | None = None  # the stop string that ended it ("stop"), if one did


@dataclass
class TokenLogprob:
    """A generated token, its log-probability and the top alternatives (id, bytes, logprob)."""
    token: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]]


# -- what a generation sends to its request thread (on ``Generation.events``) -------------------
@dataclass(frozen=True, slots=True)
class Tokens:
    """The log-probabilities of the tokens that make up the next :class:`Text`."""
    tokens: list[TokenLogprob]
    index: int  # the choice


@dataclass(frozen=True, slots=True)
class Text:
    """New text of choice ``index``."""
    text: str
    index: int


@dataclass(frozen=True, slots=True)
class Done:
    """Choice ``index`` ended (its last event)."""
    outcome: Outcome
    index: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Choice ``index`` ended with an error (its last event): ShuttingDown before it got a
    slot, or an engine fault."""
    error: BaseException
    index: int


Event = Tokens | Text | Done | Failed


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p of every token from one logits row (float64, numerically stable)."""
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class Generation:
    """One request in the scheduler. Its :class:`Text` pieces, then :class:`Done` or
    :class:`Failed`, arrive on ``events``; ``cancel()`` (or the ``disconnected`` event) stops it."""

    def __init__(self, tokens: list[int], params: Params, *, t0: float | None = None,
                 disconnected: threading.Event | None = None, index: int = 0,
                 events: queue.Queue | None = None):
        """``index``: the choice this generation is (``n`` > 1); ``events``: a queue shared
        by the choices of one request (each event carries its index)."""
        if not tokens:
            raise ValueError("a generation needs at least one prompt token")
        self.tokens = tokens
        self.params = params
        self.t0 = time.perf_counter() if t0 is None else t0
        self.disconnected = disconnected
        self.index = index
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.events: queue.Queue = events if events is not None else queue.Queue()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.capture_logits = False  # keep the prompt-end logits (tests compare kernel paths)
        self.prompt_logits: np.ndarray | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def stop_requested(self) -> bool:
        return self.cancelled.is_set() or (self.disconnected is not None
                                            and self.disconnected.is_set())

    def wait(self, timeout_s: float | None = None) -> Outcome:
        """Block until the generation ended; re-raise the error that ended it."""
        if not self.done.wait(timeout_s):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        assert self.outcome is not None  # ended without an error: with its outcome
        return self.outcome

    def _end(self, outcome: Outcome | None, error: BaseException | None = None) -> None:
        """With an outcome, or with None and the error that ended it."""
        self.outcome, self.error = outcome, error
        if error is not None:
            self.events.put(Failed(error, self.index))
        else:
            assert outcome is not None
            self.events.put(Done(outcome, self.index))
        self.done.set()


class Slot:
    """One sequence of the context: the tokens whose KV it holds, and its running request."""

    def __init__(self, seq: int):
        self.seq = seq
        self.cache: list[int] = []  # tokens whose KV is in this sequence, positions 0..n-1
        self.gen: Generation | None = None
        self.last_used = 0.0
        self._reset()

    def _reset(self) -> None:
        self.done_prompt = 0  # tokens of gen.tokens already in the KV
        self.next_token: int | None = None  # sampled, not yet decoded
        self.i_batch = -1  # index of this slot's logits row in the current batch
        self.sampler = None
        self.greedy: GreedyBias | None = None  # greedy: argmax, no sampler chain
        self.matcher: LLMatcher | None = None  # llguidance's, of a structured output
        self.scanner: StopScanner | None = None
        self.raw = bytearray()
        self.decoded = 0
        self.parts: list[str] = []
        self.outcome = Outcome()
        self.t_start = 0.0
        self.row: np.ndarray | None = None  # log-softmax of the logits (with logprobs)
        self.held: list[TokenLogprob] = []  # logprobs of text the stop scanner holds back


class Scheduler(ModelLoop):
    """Decodes up to ``engine.slots`` generations together; ``queue_size`` more may wait.

    ``slots`` 0 (SLOTS unset): the engine's, derived from the model when it loads
    (``llmfn.sizing``); until then the scheduler counts the most a derived SLOTS gives.
    ``peek`` returns the engine once loaded, else None, without waiting (the model host's):
    requests and the readiness probe see the engine's slots and sizing through it before the
    loop's first step takes the engine from ``get_engine``."""

    def __init__(self, get_engine: Callable[[], Engine], slots: int, *, queue_size: int,
                 retry_after_s: int = 2, metrics=None, registry: CollectorRegistry | None = None,
                 name: str = "generate-scheduler", deadline_s: float = 0.0,
                 peek: Callable[[], Engine | None] | None = None):
        super().__init__(queue_size=queue_size, retry_after_s=retry_after_s, metrics=metrics,
                         name=name)
        self.deadline_s = deadline_s  # 0: none
        self._get_engine = get_engine  # the model loads after the scheduler exists
        self._peek = peek
        self._from_engine = slots == 0
        slots = slots or MAX_AUTO_SLOTS
        self.slots = [Slot(i) for i in range(slots)]
        self.capacity = slots  # requests running at once
        self._engine: Engine | None = None
        self._batch: Batch | None = None
        self.peak_busy = 0  # most slots ever generating at once (tests prove batching with it)
        self.max_batch_seqs = 0  # most sequences ever in one llama_decode
        self._last_step_t = self._woken_t = 0.0  # perf_counter of the last step, of the wake
        self.reused_tokens = 0  # prompt tokens whose KV a slot kept from its last request
        registry = registry if registry is not None else CollectorRegistry()
        self._busy_gauge = Gauge("llmfn_slots_busy", "slots running a request", registry=registry)
        self._slots_gauge = Gauge("llmfn_slots", "slots of the context (SLOTS)",
                                  registry=registry)
        self._slots_gauge.set(slots)
        self._cells_gauge = Gauge("llmfn_kv_cells_used",
                                  "KV cache cells holding a token (all slots)", registry=registry)
        self._threads_gauge = Gauge("llmfn_decode_threads",
                                    "threads of the last llama_decode (N_THREADS, or fewer "
                                    "while CPUs are busy: ADAPTIVE_THREADS)", registry=registry)
        self._steps = Counter("llmfn_decode_steps", "llama_decode calls by their threads",
                              ["threads"], registry=registry)
        self._batch_seqs = Histogram("llmfn_decode_batch_sequences",
                                     "sequences in one llama_decode", buckets=SEQ_BUCKETS,
                                     registry=registry)
        self._start()

    # -- SLOTS from the engine ------------------------------------------------------------------
    def _adopt(self, engine: Engine) -> None:
        """Take the loaded engine's slot count (lock held). Nothing has run before the engine
        existed, so every slot is free."""
        if self._from_engine:
            self._from_engine = False
            self.slots = [Slot(i) for i in range(engine.slots)]
            self.capacity = engine.slots
            self._slots_gauge.set(engine.slots)

    def _loaded(self) -> Engine | None:
        """The engine once loaded, its slot count adopted (any thread)."""
        engine = self._engine or (self._peek() if self._peek is not None else None)
        if engine is not None and self._from_engine:
            with self._cond:
                self._adopt(engine)
        return engine

    def submit_all(self, items: list[Any]) -> list[Any]:
        self._loaded()  # room counts the engine's slots
        return super().submit_all(items)

    def ready(self) -> tuple[bool, str]:
        """Called after the model's readiness: "ready" and how SLOTS and threads were chosen."""
        engine = self._loaded()
        plan = engine.sizing if engine is not None else None
        if engine is None or plan is None:
            return True, "ready"
        share = engine.cpu_share
        return True, f"ready: {plan.explain()}" + (f"; {share.explain()}" if share else "")

    # -- ModelLoop hooks ------------------------------------------------------------------------
    def _gauge(self) -> None:
        super()._gauge()
        self._busy_gauge.set(self._running())

    def _room(self) -> int:
        return sum(1 for s in self.slots if s.gen is None)

    def _running(self) -> int:
        return sum(1 for s in self.slots if s.gen is not None)

    def _abort(self) -> None:
        for slot in self.slots:
            if slot.gen is not None:
                slot.gen.cancel()  # finished as "cancelled" by the next step
        for gen in self._pending:
            gen._end(None, ShuttingDown(self.retry_after_s))
        self._pending.clear()

    # -- the loop thread ------------------------------------------------------------------------
    def _ensure_engine(self) -> Engine:
        if self._engine is None:
            engine = self._get_engine()
            with self._cond:
                self._adopt(engine)
            self._engine = engine
            self._batch = Batch(self._engine.n_batch)
            # the scheduler owns the context: its slots start empty, so must the KV cache
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._engine.ctx), True)
        return self._engine

    def _step(self) -> None:
        engine = self._ensure_engine()
        with self._cond:
            expired = self._expire_waiting()
            admitted = self._admit()
        for gen in expired:
            gen._end(Outcome(deadline=True))
        for slot in admitted:
            try:
                self._start_slot(engine, slot)
            except Exception as err:  # e.g. a sampler llama.cpp refused: this request fails
                log.exception("starting a generation failed")
                self._fail(slot, err)
        for slot in self.slots:
            if slot.gen is not None and slot.gen.stop_requested():
                self._finish(slot, "cancelled")
            elif slot.gen is not None and self._past_deadline(slot.gen):
                log.warning("request deadline (REQUEST_TIMEOUT_S=%g) reached after %d "
                            "generated tokens: finish_reason length", self.deadline_s,
                            slot.outcome.completion_tokens)
                slot.outcome.deadline = True
                self._finish(slot, "length")
        now = time.perf_counter()
        if now - self._last_step_t > WAKE_S:  # idle before this burst of steps
            self._woken_t = now
        woken = now - self._woken_t < WAKE_S
        threads = engine.set_threads(woken=woken)
        # fewer threads right after idle may only be a neighbour that just stopped: a short
        # prompt chunk, so that the next step looks again soon (FreeCpus.woken)
        batch, members = self._fill(WAKE_CHUNK if woken and threads < engine.max_threads
                                    else None)
        if not members:
            return
        self._last_step_t = now
        self._batch_seqs.observe(len(members))
        self.max_batch_seqs = max(self.max_batch_seqs, len(members))
        self._threads_gauge.set(threads)
        self._steps.labels(threads=str(threads)).inc()
        try:
            batch.decode(engine.ctx)
        except Exception as err:  # fail the requests of this batch, keep serving the others
            log.exception("llama_decode failed for %d sequences", len(members))
            for slot in members:
                self._fail(slot, err)
            return
        for slot in members:
            if slot.gen is None or slot.i_batch < 0:
                continue
            try:
                if slot.gen.capture_logits and slot.outcome.ttft_s is None:
                    slot.gen.prompt_logits = engine.logits(slot.i_batch)
                if slot.gen.params.logprobs is not None:
                    slot.row = log_softmax(engine.logits(slot.i_batch))
                if slot.matcher is not None:
                    self._mask(engine, slot)
                if slot.greedy is not None:
                    token = pick_greedy(engine.logits_view(slot.i_batch), slot.greedy)
                else:
                    token = llama_cpp.llama_sampler_sample(slot.sampler, engine.ctx,
                                                           slot.i_batch)
                slot.i_batch = -1
                self._on_token(engine, slot, token)
            except Exception as err:  # this request fails; the others go on
                log.exception("sampling failed")
                self._fail(slot, err)
        self._cells_gauge.set(sum(len(s.cache) for s in self.slots))

    @staticmethod
    def _mask(engine: Engine, slot: Slot) -> None:
        """Forbid, in the slot's logits row, every token its grammar does not allow next."""
        matcher = slot.matcher
        assert matcher is not None  # called for a slot with a grammar
        apply_mask(matcher, engine.logits_view(slot.i_batch))
        if matcher.is_error():
            raise RuntimeError(f"grammar matcher failed: {matcher.get_error()[:200]}")

    def _past_deadline(self, gen: Generation) -> bool:
        return bool(self.deadline_s) and time.perf_counter() - gen.t0 >= self.deadline_s

    def _expire_waiting(self) -> list[Generation]:
        """Take the waiting requests that reached the deadline out of the queue (lock held)."""
        if not self.deadline_s or not self._pending:
            return []
        expired = [g for g in self._pending if self._past_deadline(g)]
        if expired:
            log.warning("request deadline (REQUEST_TIMEOUT_S=%g) reached by %d request(s) "
                        "still waiting for a slot", self.deadline_s, len(expired))
            for g in expired:
                self._pending.remove(g)
            self._gauge()
        return expired

    def _admit(self) -> list[Slot]:
        """Give waiting requests free slots, oldest first (lock held). The slot whose kept KV
        shares the longest prefix with the prompt wins; ties go to the least recently used."""
        admitted = []
        while self._pending:
            free = [s for s in self.slots if s.gen is None]
            if not free:
                break
            gen = self._pending.popleft()
            shared, _, _, slot = max((_common_prefix(s.cache, gen.tokens), -s.last_used,
                                      -s.seq, s) for s in free)  # seq is unique: no Slot compare
            slot._reset()
            slot.gen = gen
            slot.done_prompt = min(shared, len(gen.tokens) - 1)  # KV kept; one token is redone
            admitted.append(slot)
        self.peak_busy = max(self.peak_busy, self._running())
        self._gauge()
        return admitted

    def _start_slot(self, engine: Engine, slot: Slot) -> None:
        """Reuse the slot's KV for the prefix found at admission; drop the rest; build the
        sampler."""
        gen, keep = slot.gen, slot.done_prompt
        assert gen is not None  # an admitted slot
        if keep < len(slot.cache):
            self._forget(engine, slot, keep)
        self.reused_tokens += keep
        slot.outcome.cached_tokens = keep
        slot.greedy = engine.greedy_bias(gen.params)
        if slot.greedy is None:
            seed = gen.params.seed if gen.params.seed is not None else random.getrandbits(32)
            slot.sampler = engine.new_sampler(gen.params, seed)
        if gen.params.grammar is not None:
            slot.matcher = gen.params.grammar.matcher()
        slot.scanner = StopScanner(gen.params.stop)
        slot.t_start = time.perf_counter()
        if gen.params.logprobs is not None:
            slot.outcome.tokens = []

    def _fill(self, prompt_cap: int | None = None) -> tuple[Batch, list[Slot]]:
        """The next batch and its slots: every generating slot's token, then prompt chunks,
        oldest request first (at most ``prompt_cap`` prompt tokens when given)."""
        batch, members = self._batch, []
        assert batch is not None  # made with the engine (_ensure_engine)
        batch.clear()
        for slot in self.slots:
            if slot.gen is not None and slot.next_token is not None:
                slot.i_batch = batch.add([slot.next_token], len(slot.cache), slot.seq,
                                         logits_last=True)
                slot.cache.append(slot.next_token)
                slot.next_token = None
                members.append(slot)
        prompting = sorted((s for s in self.slots if s.gen is not None
                            and s.done_prompt < len(s.gen.tokens)), key=lambda s: s.t_start)
        cap = batch.room if prompt_cap is None else min(batch.room, prompt_cap)
        for slot in prompting:
            if cap <= 0:
                break
            assert slot.gen is not None  # prompting slots are busy
            tokens = slot.gen.tokens
            chunk = tokens[slot.done_prompt:slot.done_prompt + cap]
            cap -= len(chunk)
            last = slot.done_prompt + len(chunk) == len(tokens)
            index = batch.add(chunk, len(slot.cache), slot.seq, logits_last=last)
            slot.cache.extend(chunk)
            slot.done_prompt += len(chunk)
            members.append(slot)
            if last:
                slot.i_batch = index
        return batch, members

    def _on_token(self, engine: Engine, slot: Slot, token: int) -> None:
        gen, out, scanner = slot.gen, slot.outcome, slot.scanner
        assert gen is not None and scanner is not None  # a started slot
        if out.ttft_s is None:
            out.ttft_s = time.perf_counter() - gen.t0
        if gen.stop_requested():
            return self._finish(slot, "cancelled")
        if engine.is_eog(token):
            return self._finish(slot, "stop")
        if slot.matcher is not None and not slot.matcher.consume_token(token):
            raise RuntimeError(f"grammar matcher refused sampled token {token}")
        out.completion_tokens += 1
        raw = engine.piece(token)
        slot.raw += raw
        if slot.row is not None:
            self._record_logprob(engine, slot, token, raw)
        piece, slot.decoded = decode_complete(slot.raw, slot.decoded)
        emit, hit = scanner.feed(piece)
        if emit:
            self._emit(slot, emit)
        if hit or (slot.matcher is not None and slot.matcher.is_stopped()):
            return self._finish(slot, "stop")
        if out.completion_tokens >= gen.params.max_tokens:
            return self._finish(slot, "length")
        slot.next_token = token

    @staticmethod
    def _record_logprob(engine: Engine, slot: Slot, token: int, raw: bytes) -> None:
        row, gen = slot.row, slot.gen
        assert row is not None and gen is not None  # a started slot that read its logits row
        k = gen.params.logprobs
        top = []
        if k:
            best = np.argpartition(row, -k)[-k:]
            best = best[np.argsort(row[best])[::-1]]
            top = [(int(t), engine.piece(int(t)), float(row[t])) for t in best]
        entry = TokenLogprob(token, raw, float(row[token]), top)
        slot.outcome.logprob_sum += entry.logprob
        slot.held.append(entry)
        slot.row = None

    @staticmethod
    def _emit(slot: Slot, text: str) -> None:
        """Send ``text`` (after the logprobs of the tokens that made it, if any)."""
        gen = slot.gen
        assert gen is not None  # a started slot
        if slot.held:
            assert slot.outcome.tokens is not None  # held logprobs: the outcome lists them
            slot.outcome.tokens.extend(slot.held)
            gen.events.put(Tokens(slot.held, gen.index))
            slot.held = []
        if text:
            slot.parts.append(text)
            gen.events.put(Text(text, gen.index))

    def _finish(self, slot: Slot, reason: str) -> None:
        """End the slot's request: flush held-back text, drop the generated tokens' KV."""
        gen, out, scanner, engine = slot.gen, slot.outcome, slot.scanner, self._engine
        assert gen is not None and scanner is not None and engine is not None  # a started slot
        out.finish_reason = reason
        if reason == "stop" and scanner.hit:
            out.stop_sequence = scanner.matched
        if reason == "length" or (reason == "stop" and not scanner.hit):
            tail = scanner.flush()
            if tail or slot.held:
                self._emit(slot, tail)
        out.generation_s = time.perf_counter() - slot.t_start
        out.text = "".join(slot.parts)
        keep = min(len(slot.cache), len(gen.tokens))
        if keep < len(slot.cache):
            self._forget(engine, slot, keep)
        self._release(slot)
        gen._end(out)

    def _fail(self, slot: Slot, err: BaseException) -> None:
        gen, engine = slot.gen, self._engine
        assert gen is not None and engine is not None  # a busy slot, of a loaded engine
        self._forget(engine, slot, 0)
        self._release(slot)
        gen._end(None, err)

    def _release(self, slot: Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
        slot.next_token, slot.i_batch, slot.sampler, slot.matcher = None, -1, None, None
        slot.greedy = None
        slot.last_used = time.monotonic()
        with self._cond:
            slot.gen = None
            self._gauge()
            self._cond.notify_all()

    @staticmethod
    def _forget(engine: Engine, slot: Slot, keep: int) -> None:
        """Remove the slot's KV from position ``keep`` on."""
        memory = llama_cpp.llama_get_memory(engine.ctx)
        llama_cpp.llama_memory_seq_rm(memory, slot.seq, keep, -1)
        del slot.cache[keep:]

    def close(self) -> None:
        """Free the batch and samplers (after ``drain``; the engine is closed by its owner)."""
        if self._batch is not None:
            self._batch.close()
            self._batch = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
