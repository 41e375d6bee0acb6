"""The dynamic batcher on the real model: merging, splitting, order, bounds, errors, drain.

A gate held by the test keeps the first model call running while other requests queue, so
what is merged does not depend on timing.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from function.batcher import Batcher
from llmfn.errors import NotReady, QueueFull

WAIT_S = 30  # upper bound for waits; never a timing assertion


class GatedModel:
    """The real embedder; records each call's size; the first call waits for ``gate``."""

    def __init__(self, embedder, *, gate_first: bool = True, fail_on: int | None = None):
        self.embedder = embedder
        self.calls: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not gate_first:
            self.gate.set()
        self.fail_on = fail_on

    def __call__(self, seqs):
        self.calls.append(len(seqs))
        self.started.set()
        assert self.gate.wait(WAIT_S)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("model failed")
        return self.embedder.embed(seqs)


def seqs_of(embedder, texts):
    return [embedder.tokenize(t) for t in texts]


@pytest.fixture
def make_batcher():
    made = []

    def make(model, **kw):
        kw.setdefault("window_s", 0.005)
        kw.setdefault("max_batch_size", 32)
        kw.setdefault("queue_size", 16)
        b = Batcher(model, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.drain(5)


def test_waiting_requests_share_one_call_and_get_their_own_rows(embedder, make_batcher):
    model = GatedModel(embedder)
    b = make_batcher(model, window_s=WAIT_S, max_batch_size=4)  # a full batch ends the window
    first = b.submit(seqs_of(embedder, ["a", "b", "c", "d"]))
    assert model.started.wait(WAIT_S)
    texts = ["alpha", "beta gamma", "delta", "epsilon zeta eta"]
    rest = [b.submit(seqs_of(embedder, [t])) for t in texts]
    model.gate.set()
    got = [p.wait(WAIT_S)[0] for p in rest]
    assert first.wait(WAIT_S).shape == (4, 384)
    assert model.calls == [4, 4]
    for t, v in zip(texts, got):
        assert np.dot(v, embedder.embed(seqs_of(embedder, [t]))[0]) > 0.9999


@pytest.mark.parametrize("window_s,calls", [(0.005, [1, 6]), (0, [1, 2, 2, 2])])
def test_requests_waiting_past_the_window_merge_unless_it_is_zero(embedder, make_batcher,
                                                                   window_s, calls):
    model = GatedModel(embedder)
    b = make_batcher(model, window_s=window_s)
    first = b.submit(seqs_of(embedder, ["first"]))
    assert model.started.wait(WAIT_S)
    rest = [b.submit(seqs_of(embedder, [t, t + "!"])) for t in ("a", "b", "c")]
    model.gate.set()
    for p in [first, *rest]:
        p.wait(WAIT_S)
    assert model.calls == calls


def test_large_request_spans_calls_in_order(embedder, make_batcher):
    model = GatedModel(embedder, gate_first=False)
    b = make_batcher(model, window_s=0, max_batch_size=4)
    texts = [f"sentence number {i}" for i in range(10)]
    out = b.submit(seqs_of(embedder, texts)).wait(WAIT_S)
    assert model.calls == [4, 4, 2]
    assert np.min(np.sum(out * embedder.embed(seqs_of(embedder, texts)), axis=1)) > 0.9999


def test_queue_bound_gives_queue_full(embedder, make_batcher):
    model = GatedModel(embedder)
    b = make_batcher(model, queue_size=2, retry_after_s=3)
    b.submit(seqs_of(embedder, ["running"]))
    assert model.started.wait(WAIT_S)
    waiting = [b.submit(seqs_of(embedder, ["w"])) for _ in range(2)]
    with pytest.raises(QueueFull) as info:
        b.submit(seqs_of(embedder, ["one too many"]))
    assert info.value.status == 429 and info.value.headers() == {"Retry-After": "3"}
    model.gate.set()
    for p in waiting:
        p.wait(WAIT_S)


def test_a_failed_call_fails_its_requests_only(embedder, make_batcher):
    model = GatedModel(embedder, fail_on=1)
    b = make_batcher(model, window_s=0)
    doomed = b.submit(seqs_of(embedder, ["doomed"]))
    assert model.started.wait(WAIT_S)
    fine = b.submit(seqs_of(embedder, ["fine"]))
    model.gate.set()
    with pytest.raises(RuntimeError):
        doomed.wait(WAIT_S)
    assert fine.wait(WAIT_S).shape == (1, 384)


def test_drain_finishes_work_then_refuses(embedder, make_batcher):
    model = GatedModel(embedder, gate_first=False)
    b = make_batcher(model)
    p = b.submit(seqs_of(embedder, ["last one"]))
    assert b.drain(WAIT_S) is True
    assert p.wait(WAIT_S).shape == (1, 384)
    with pytest.raises(NotReady):
        b.submit(seqs_of(embedder, ["late"]))


def test_drain_past_the_grace_fails_waiting_requests(embedder, make_batcher):
    model = GatedModel(embedder)
    b = make_batcher(model, window_s=0)
    b.submit(seqs_of(embedder, ["running"]))
    assert model.started.wait(WAIT_S)
    waiting = b.submit(seqs_of(embedder, ["waiting"]))
    assert b.drain(0.05) is False
    with pytest.raises(NotReady):
        waiting.wait(WAIT_S)
    model.gate.set()
