"""ModelLoop: one thread owns the model; admission, a bounded wait queue and drain, written once.

llama-cpp-python is not thread-safe, so every call into a model runs on one thread. generate's
slot scheduler and embed's batcher are both a ModelLoop: request threads ``submit`` work, the
loop thread runs ``_step`` while anything waits or runs, and ``drain`` stops the loop on
shutdown. Admission: a request is taken when a free place (a slot, an idle model call) is there
or fewer than ``queue_size`` requests already wait; otherwise 429 (QueueFull).
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from .contract import Worker
from .errors import QueueFull, ShuttingDown

log = logging.getLogger(__name__)


class ModelLoop(Worker):
    """Base of the model-owning loops: subclasses define ``_room``, ``_running``, ``_step`` and
    ``_abort`` (and set ``capacity``); the lock ``_cond`` guards ``_pending`` and whatever the
    subclass marks running. The worker of a model function (``llmfn.contract.Worker``): its
    thread runs from construction on, and the runtime drains it on stop."""

    def __init__(self, *, queue_size: int, retry_after_s: int = 2, metrics=None,
                 name: str = "model-loop"):
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._pending: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _start(self) -> None:
        """Start the loop thread (called by the subclass once its own state exists)."""
        self._thread.start()

    # -- hooks (called with ``_cond`` held, except ``_step``) ----------------------------------
    def _room(self) -> int:
        """Requests that could start running now (free slots, an idle model call)."""
        raise NotImplementedError

    def _running(self) -> int:
        """Requests being run by the model now."""
        raise NotImplementedError

    def _step(self) -> None:
        """One round of model work on the loop thread (lock not held); takes from ``_pending``."""
        raise NotImplementedError

    def _abort(self) -> None:
        """The drain grace is over: cancel running requests and fail waiting ones."""
        raise NotImplementedError

    # -- request threads ------------------------------------------------------------------------
    def submit(self, item: Any) -> Any:
        """Queue ``item``; QueueFull when no room and ``queue_size`` requests already wait."""
        return self.submit_all([item])[0]

    def submit_all(self, items: list[Any]) -> list[Any]:
        """Queue the parts of one request together (generate's ``n`` choices), or none of them:
        QueueFull when they would leave more than ``queue_size`` waiting."""
        with self._cond:
            if not self._accepting:
                raise ShuttingDown(self.retry_after_s)
            waiting = len(self._pending) - self._room()
            if waiting + len(items) > self.queue_size:
                raise QueueFull(f"Too many requests: {max(waiting, 0)} already waiting for the "
                                "model. Retry later.", retry_after_s=self.retry_after_s)
            self._pending.extend(items)
            self._gauge()
            self._cond.notify_all()
        return items

    def depth(self) -> int:
        """Requests waiting for the model."""
        with self._cond:
            return len(self._pending)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.in_flight.set(self._running())

    # -- the loop thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._running() and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending and not self._running():
                    return
            try:
                self._step()
            except BaseException:  # a bug in a step must not kill the thread silently
                log.exception("model loop step failed")
                with self._cond:
                    self._abort()
            with self._cond:
                self._gauge()
                self._cond.notify_all()

    def drain(self, grace_s: float) -> bool:
        """Stop accepting; let waiting and running requests finish within ``grace_s``; then
        abort the rest. True when everything finished in time."""
        with self._cond:
            self._accepting = False
            idle = self._cond.wait_for(lambda: not self._pending and not self._running(),
                                       timeout=grace_s)
            if not idle:
                log.warning("shutdown grace of %.1fs over: aborting %d running and %d waiting "
                            "request(s)", grace_s, self._running(), len(self._pending))
                self._abort()
            self._closed = True
            self._cond.notify_all()
        return idle
