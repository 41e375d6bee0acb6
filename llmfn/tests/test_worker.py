"""ModelLoop: admission, the bounded wait queue and drain, shared by generate and embed.

The loop under test runs callables with ``capacity`` of them at once, the smallest subclass
that exercises every hook; generate's scheduler and embed's batcher are tested in their own
function folders on real models.
"""
import threading

import pytest

from llmfn.errors import NotReady, QueueFull
from llmfn.worker import ModelLoop

WAIT_S = 20


class Call:
    def __init__(self, fn):
        self.fn, self.cancelled, self.started = fn, threading.Event(), threading.Event()
        self.done, self.result, self.error = threading.Event(), None, None

    def wait(self):
        assert self.done.wait(WAIT_S)
        if self.error is not None:
            raise self.error
        return self.result


class CallLoop(ModelLoop):
    """Starts up to ``capacity`` waiting calls on helper threads, one step at a time."""

    def __init__(self, capacity: int, **kw):
        super().__init__(**kw)
        self.capacity, self.active, self.steps = capacity, [], []
        self._start()

    def _room(self):
        return self.capacity - len(self.active)

    def _running(self):
        return len(self.active)

    def _abort(self):
        for call in self.active:
            call.cancelled.set()
        for call in self._pending:
            call.error = NotReady("shutting down")
            call.done.set()
        self._pending.clear()

    def _step(self):
        self.steps.append(threading.current_thread().name)
        with self._cond:
            while self._pending and self._room() > 0:
                call = self._pending.popleft()
                self.active.append(call)
                threading.Thread(target=self._run_call, args=(call,)).start()
            self._cond.wait(0.01)

    def _run_call(self, call):
        call.started.set()
        try:
            call.result = call.fn(call)
        except Exception as err:
            call.error = err
        with self._cond:
            self.active.remove(call)
            self._cond.notify_all()
        call.done.set()


def test_steps_run_on_the_loop_thread_and_everything_finishes():
    loop = CallLoop(2, queue_size=10, name="the-loop")
    calls = [loop.submit(Call(lambda c, i=i: i)) for i in range(8)]
    assert [c.wait() for c in calls] == list(range(8))
    assert set(loop.steps) == {"the-loop"}
    assert loop.drain(WAIT_S)


@pytest.mark.parametrize("capacity,queue_size", [(1, 0), (1, 2), (3, 1)])
def test_queue_bound_counts_free_room(capacity, queue_size):
    """``capacity`` run, ``queue_size`` wait, the next is 429 with Retry-After."""
    loop = CallLoop(capacity, queue_size=queue_size, retry_after_s=5)
    release = threading.Event()
    running = [loop.submit(Call(lambda c: release.wait(WAIT_S))) for _ in range(capacity)]
    assert all(c.started.wait(WAIT_S) for c in running)
    waiting = [loop.submit(Call(lambda c: "ok")) for _ in range(queue_size)]
    with pytest.raises(QueueFull) as err:
        loop.submit(Call(lambda c: "too many"))
    assert err.value.headers() == {"Retry-After": "5"}
    assert loop.depth() == queue_size
    release.set()
    assert [c.wait() for c in waiting] == ["ok"] * queue_size
    assert loop.drain(WAIT_S)


def test_drain_finishes_in_flight_then_refuses():
    loop = CallLoop(1, queue_size=2)
    go = threading.Event()
    first = loop.submit(Call(lambda c: go.wait(WAIT_S) and "done"))
    assert first.started.wait(WAIT_S)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("drained", loop.drain(WAIT_S)))
    t.start()
    go.set()
    t.join(WAIT_S)
    assert result["drained"] is True and first.wait() == "done"
    with pytest.raises(NotReady):
        loop.submit(Call(lambda c: None))


def test_drain_aborts_after_the_grace():
    loop = CallLoop(1, queue_size=2)
    running = loop.submit(Call(lambda c: c.cancelled.wait(WAIT_S) and "cancelled"))
    queued = loop.submit(Call(lambda c: "never runs"))
    assert running.started.wait(WAIT_S)
    assert loop.drain(0.05) is False
    assert running.wait() == "cancelled"
    with pytest.raises(NotReady):
        queued.wait()


def test_a_failing_step_aborts_and_the_loop_goes_on():
    class Flaky(CallLoop):
        fail = True

        def _step(self):
            if self.fail:
                self.fail = False
                raise RuntimeError("bug in a step")
            super()._step()

    loop = Flaky(1, queue_size=2)
    lost = loop.submit(Call(lambda c: "lost"))
    with pytest.raises(NotReady):
        lost.wait()
    assert loop.submit(Call(lambda c: "served")).wait() == "served"
    assert loop.drain(WAIT_S)
