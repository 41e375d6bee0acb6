"""ModelWorker: one job at a time on one thread, bounded queue, drain on shutdown."""
import threading

import pytest

from llmfn.errors import NotReady, QueueFull
from llmfn.worker import ModelWorker

WAIT_S = 20


def test_jobs_run_one_at_a_time_on_one_thread():
    worker = ModelWorker(queue_size=10)
    seen, active, peak = [], [0], [0]
    lock = threading.Lock()

    def job(j):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        seen.append(threading.current_thread().name)
        with lock:
            active[0] -= 1
        return len(seen)

    jobs = [worker.submit(job) for _ in range(8)]
    assert [j.wait(WAIT_S) for j in jobs] == list(range(1, 9))
    assert peak[0] == 1 and set(seen) == {"model-worker"}
    assert worker.drain(WAIT_S)


@pytest.mark.parametrize("queue_size", [0, 2])
def test_queue_bound(queue_size):
    worker = ModelWorker(queue_size=queue_size, retry_after_s=5)
    release = threading.Event()
    running = worker.submit(lambda j: release.wait(WAIT_S))
    assert running.started.wait(WAIT_S)
    waiting = [worker.submit(lambda j: "ok") for _ in range(queue_size)]
    with pytest.raises(QueueFull) as err:
        worker.submit(lambda j: "too many")
    assert err.value.headers() == {"Retry-After": "5"}
    assert worker.depth() == queue_size
    release.set()
    assert [w.wait(WAIT_S) for w in waiting] == ["ok"] * queue_size
    worker.drain(WAIT_S)


def test_errors_reach_the_caller():
    worker = ModelWorker(queue_size=1)
    job = worker.submit(lambda j: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        job.wait(WAIT_S)
    assert worker.submit(lambda j: "still works").wait(WAIT_S) == "still works"


def test_drain_finishes_in_flight_then_refuses():
    worker = ModelWorker(queue_size=2)
    go = threading.Event()
    first = worker.submit(lambda j: go.wait(WAIT_S) and "done")
    assert first.started.wait(WAIT_S)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("drained", worker.drain(WAIT_S)))
    t.start()
    go.set()
    t.join(WAIT_S)
    assert result["drained"] is True and first.wait(WAIT_S) == "done"
    with pytest.raises(NotReady):
        worker.submit(lambda j: None)


def test_drain_cancels_after_the_grace():
    worker = ModelWorker(queue_size=2)
    stop_seen = threading.Event()

    def long_job(job):
        job.cancelled.wait(WAIT_S)  # a generation checks this between tokens
        stop_seen.set()
        return "cancelled"

    running = worker.submit(long_job)
    queued = worker.submit(lambda j: "never runs")
    assert running.started.wait(WAIT_S)
    assert worker.drain(0.05) is False
    assert stop_seen.wait(WAIT_S)
    assert running.wait(WAIT_S) == "cancelled"
    assert queued.done.wait(WAIT_S) and queued.result is None
