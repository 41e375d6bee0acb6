"""ModelHost: pulls the weights and loads the model in the background, and reports readiness.

``start()`` returns at once (func runs ``start`` before listening, and a slow pull inside it
would be killed by the liveness probe). ``ready()`` is False with a reason ("downloading 41 %",
"verifying", "loading") until the model is loaded; ``alive()`` turns False only when loading
failed for good, so the kubelet restarts the pod.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import PurePosixPath
from typing import Any, Callable

from . import weights
from .settings import ModelSettings, Settings

log = logging.getLogger(__name__)

Loader = Callable[[str, ModelSettings], Any]


def model_id(settings: Settings) -> str:
    """The id served in /v1/models: MODEL_NAME, else the file name of MODEL_URI without .gguf."""
    if settings.model.name:
        return settings.model.name
    stem = PurePosixPath(settings.storage.model_uri).name
    return stem[:-5] if stem.endswith(".gguf") else (stem or "model")


class ModelHost:
    """Owns the model's lifecycle: fetch, verify, load, then hand it out."""

    def __init__(self, settings: Settings, loader: Loader, *, metrics=None,
                 fetch: Callable[..., weights.FetchResult] = weights.fetch):
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self._fetch = fetch
        self.model_id = model_id(settings)
        self.model: Any = None
        self.sha256 = ""
        self.cold_start_s: dict[str, float] = {}
        self._state = "not started"
        self._failed: str | None = None
        self._lock = threading.Lock()
        self._cold = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start fetch + load on a background thread and return at once."""
        with self._lock:
            if self._thread is not None:
                return
            self._state = "starting"
            self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
            self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """Block until loading ended (loaded or failed) or the timeout passed; True if ready."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.model is not None

    def _progress(self, done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 0.0
        self._state = f"downloading {pct:.0f} %"

    def _load(self) -> None:
        try:
            self.settings.require_model()
            self._state = "downloading"
            result = self._fetch(self.settings.storage, progress=self._progress)
            self.sha256 = result.sha256
            self._phase("download", 0.0 if result.cached else result.download_s)
            self._phase("verify", result.verify_s)
            self._state = "loading"
            t0 = time.perf_counter()
            model = self.loader(result.path, self.settings.model)
            self._phase("load", time.perf_counter() - t0)
            self.model = model
            self._state = "ready"
            if self.metrics is not None:
                self.metrics.model_ready.set(1)
            log.info("model %s ready (sha256 %s, cold start %s)", self.model_id,
                     self.sha256[:12], {k: round(v, 3) for k, v in self.cold_start_s.items()})
        except Exception as err:  # reported through ready()/alive(); traceback in the log
            log.exception("loading the model failed for good")
            self._failed = _reason(err)
            self._state = "failed"

    def _phase(self, name: str, seconds: float) -> None:
        self.cold_start_s[name] = seconds
        if self.metrics is not None:
            self.metrics.cold_start.labels(phase=name).set(seconds)

    def ready(self) -> tuple[bool, str]:
        if self.model is not None:
            return True, "ready"
        if self._failed:
            return False, f"failed: {self._failed}"
        return False, self._state

    def alive(self) -> tuple[bool, str]:
        if self._failed:
            return False, f"model load failed: {self._failed}"
        return True, "alive"

    def take_cold_start(self) -> bool:
        """True exactly once: for the first request this process serves."""
        with self._lock:
            cold, self._cold = self._cold, False
            return cold


def _reason(err: Exception) -> str:
    """A one-line reason safe to show in a probe response (no traceback)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]
