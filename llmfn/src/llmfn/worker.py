"""ModelWorker: one thread owns the model; requests wait in a bounded queue (429 beyond it).

llama-cpp-python is not thread-safe, so every call into the model runs on this one thread.
Capacity is one running job plus ``queue_size`` waiting ones.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable

from .errors import NotReady, QueueFull

log = logging.getLogger(__name__)


class Job:
    """One unit of model work; ``cancel()`` asks it to stop (checked between tokens)."""

    def __init__(self, fn: Callable[["Job"], Any]):
        self.fn = fn
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.started = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, timeout_s: float | None = None) -> Any:
        """Block until the job ran; re-raise its exception."""
        if not self.done.wait(timeout_s):
            raise TimeoutError("job did not finish in time")
        if self.error is not None:
            raise self.error
        return self.result


class ModelWorker:
    """Runs jobs one at a time on a dedicated thread, with a bounded wait queue."""

    def __init__(self, queue_size: int, *, retry_after_s: int = 2, metrics=None,
                 name: str = "model-worker"):
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._accepting = True
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)``; raise QueueFull when ``queue_size`` jobs already wait."""
        job = Job(fn)
        with self._cond:
            if not self._accepting:
                raise NotReady("The function is shutting down.", retry_after_s=self.retry_after_s)
            busy = self._running is not None or bool(self._pending)
            if busy and len(self._pending) >= self.queue_size:
                raise QueueFull(f"Too many requests: {len(self._pending)} already waiting for the "
                                "model. Retry later.", retry_after_s=self.retry_after_s)
            self._pending.append(job)
            self._gauge()
            self._cond.notify_all()
        return job

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.in_flight.set(1 if self._running is not None else 0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                job = self._pending.popleft()
                self._running = job
                self._gauge()
            try:
                if not job.cancelled.is_set():
                    job.started.set()
                    job.result = job.fn(job)
            except BaseException as err:  # delivered to the waiting request thread
                job.error = err
            finally:
                job.done.set()
                with self._cond:
                    self._running = None
                    self._gauge()
                    self._cond.notify_all()

    def drain(self, grace_s: float) -> bool:
        """Stop accepting, let queued and running jobs finish within ``grace_s``, cancel the rest."""
        with self._cond:
            self._accepting = False
            idle = self._cond.wait_for(lambda: not self._pending and self._running is None,
                                       timeout=grace_s)
            if not idle:
                log.warning("shutdown grace of %.1fs over: cancelling %d job(s)", grace_s,
                            len(self._pending) + (self._running is not None))
                for job in list(self._pending) + ([self._running] if self._running else []):
                    job.cancel()
            self._closed = True
            self._cond.notify_all()
        return idle
