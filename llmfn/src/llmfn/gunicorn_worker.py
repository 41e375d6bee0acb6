"""gunicorn's gthread worker, draining before it stops listening (how Knative stops a pod).

The stock worker stops accepting at SIGTERM: new connections then wait unanswered in the
backlog and are reset when the socket closes, and readiness gets no answer. This one keeps
serving while the runtime drains (``Runtime.stop``): readiness answers 503 "stopping", new
requests get 503 + ``Retry-After`` (another instance answers them), in-flight requests finish
within ``SHUTDOWN_GRACE_S`` and events are flushed; then it stops like the stock worker.
"""
from __future__ import annotations

import logging
import threading

from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)


class DrainingWorker(ThreadWorker):
    """``worker_class`` of llmfn's gunicorn config."""

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM: drain on a thread (not in the signal handler), then stop."""
        if getattr(self, "_draining", False):
            return
        self._draining = True
        threading.Thread(target=self._drain_then_stop, name="drain", daemon=True).start()

    def _drain_then_stop(self) -> None:
        runtime = getattr(getattr(self, "wsgi", None), "extensions", {}).get("llmfn.runtime")
        try:
            if runtime is not None:
                runtime.stop()
        except Exception:  # stop anyway: the master's graceful timeout is the backstop
            log.exception("draining failed")
        finally:
            self.alive = False
