"""ModelHost: pulls the weights and loads the model in the background, and reports readiness.

``start()`` returns at once (func runs ``start`` before listening, and a slow pull inside it
would be killed by the liveness probe). ``ready()`` is False with a reason ("downloading 41 %",
"waiting for S3: ...", "loading") until the model is loaded; ``alive()`` turns False only when
loading failed for good, so the kubelet restarts the pod.

Cold start overlaps what it can: :func:`prefetch`, called by a function's module before its
heavy imports (llama_cpp, numpy, Flask), starts the weight fetch on its own thread at once;
the ModelHost built later adopts that fetch when its storage settings are the same. The fetch
hashes while downloading (llmfn.weights), and the model loads (llama.cpp mmaps the file) as
soon as the file is complete and verified.

A transient fetch failure (S3 unreachable, 5xx, a timeout) is retried with exponential
backoff (1 s doubling to 30 s) for ``retry_for_s``; readiness names the reason and the next
try meanwhile, and liveness stays True, so the pod becomes ready when S3 returns, without a
restart. Anything else (not found, access denied, a checksum mismatch) fails for good.

Phase timers (``cold_start_s``, and the ``llmfn_cold_start_seconds{phase}`` gauge): download,
verify (hash tail after the last byte), load; the gauge also gets ``import`` (process start
to ``ModelHost.start``: interpreter and imports), ``fetch_wait`` (how long the loader waited
for the fetch after the imports) and ``ready`` (process start to loaded).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping

from . import weights
from .settings import ModelSettings, Settings, StorageSettings, build

log = logging.getLogger(__name__)

Loader = Callable[[str, ModelSettings], Any]
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
RETRY_FOR_S = 900.0  # transient failures are retried this long, then the fetch fails for good


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution); None elsewhere."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def model_id(settings: Settings) -> str:
    """The id served in /v1/models: MODEL_NAME, else the file name of MODEL_URI without .gguf."""
    if settings.model.name:
        return settings.model.name
    stem = PurePosixPath(settings.storage.model_uri).name
    return stem[:-5] if stem.endswith(".gguf") else (stem or "model")


class Fetcher:
    """The weight fetch on its own thread, retrying transient failures with backoff.

    ``state`` is the readiness reason while it runs; ``result`` or ``error`` once it ended.
    """

    def __init__(self, storage: StorageSettings,
                 fetch: Callable[..., weights.FetchResult] = weights.fetch, *,
                 retry_for_s: float = RETRY_FOR_S):
        self.storage = storage
        self._fetch = fetch
        self.retry_for_s = retry_for_s
        self.state = "downloading"
        self.result: weights.FetchResult | None = None
        self.error: Exception | None = None
        self.retries = 0
        self.t_start = self.t_end = 0.0  # time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-fetch", daemon=True)

    def start(self) -> "Fetcher":
        self.t_start = time.monotonic()
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def _progress(self, done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 0.0
        self.state = f"downloading {pct:.0f} % ({done / 2**20:.0f}/{total / 2**20:.0f} MiB)"

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        give_up = time.monotonic() + self.retry_for_s
        try:
            while True:
                try:
                    self.result = self._fetch(self.storage, progress=self._progress)
                    return
                except weights.WeightsError as err:
                    if not err.transient or time.monotonic() + delay > give_up:
                        raise
                    self.retries += 1
                    reason = _reason(err)
                    log.warning("fetching the weights failed (%s); retry %d in %.0f s",
                                reason, self.retries, delay)
                    until = time.monotonic() + delay
                    while (left := until - time.monotonic()) > 0:
                        self.state = (f"waiting for S3: {reason} (retry {self.retries} in "
                                      f"{left:.0f} s)")
                        time.sleep(min(left, 1.0))
                    self.state = f"downloading (retry {self.retries} after: {reason})"
                    delay = min(delay * 2, RETRY_MAX_S)
        except Exception as err:  # reported by the ModelHost
            self.error = err
        finally:
            self.t_end = time.monotonic()
            self._done.set()


_early: dict[StorageSettings, Fetcher] = {}
_early_lock = threading.Lock()


def prefetch(env: Mapping[str, str] | None = None, **defaults: str) -> Fetcher | None:
    """Start fetching the weights that ``env`` (default: the process environment, over
    ``defaults``) names, now, on a thread; a ModelHost built later with the same storage
    settings adopts the fetch. Call it before the heavy imports. Never raises: with bad
    settings it does nothing and the ModelHost reports the problem."""
    try:
        _ensure_log_handler()
        merged = {**defaults, **(os.environ if env is None else env)}
        storage = build(StorageSettings, merged)
        if not storage.model_uri.startswith("s3://"):
            return None  # file:// is local: nothing to overlap worth a thread
        with _early_lock:
            if storage not in _early:
                _early[storage] = Fetcher(storage).start()
            return _early[storage]
    except Exception:  # noqa: BLE001  (the ModelHost fetches and reports instead)
        log.debug("prefetch skipped", exc_info=True)
        return None


def _adopt(storage: StorageSettings) -> Fetcher | None:
    with _early_lock:
        return _early.pop(storage, None)


def _ensure_log_handler() -> None:
    """Make llmfn's INFO lines (download progress, phases) reach stderr when the server
    configured no logging (gunicorn configures only its own loggers)."""
    import logging as _logging

    root, ours = _logging.getLogger(), _logging.getLogger("llmfn")
    if root.handlers or ours.handlers:
        return
    handler = _logging.StreamHandler()
    handler.setFormatter(_logging.Formatter(
        "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    ours.addHandler(handler)
    level = os.environ.get("LOG_LEVEL", "info").upper()
    ours.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")


class ModelHost:
    """Owns the model's lifecycle: fetch, verify, load, then hand it out."""

    def __init__(self, settings: Settings, loader: Loader, *, metrics=None,
                 fetch: Callable[..., weights.FetchResult] = weights.fetch,
                 retry_for_s: float = RETRY_FOR_S):
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self._fetch = fetch
        self.retry_for_s = retry_for_s
        self.model_id = model_id(settings)
        self.model: Any = None
        self.sha256 = ""
        self.cold_start_s: dict[str, float] = {}
        self._state = "not started"
        self._failed: str | None = None
        self._lock = threading.Lock()
        self._cold = True
        self._thread: threading.Thread | None = None
        self._fetcher: Fetcher | None = None

    def start(self) -> None:
        """Start fetch + load on background threads and return at once."""
        with self._lock:
            if self._thread is not None:
                return
            self._state = "starting"
            _ensure_log_handler()
            self._gauge("import", process_age_s())
            self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
            self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """Block until loading ended (loaded or failed) or the timeout passed; True if ready."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.model is not None

    def _load(self) -> None:
        try:
            self.settings.require_model()
            storage = self.settings.storage
            fetcher = _adopt(storage)
            if fetcher is None:
                fetcher = Fetcher(storage, self._fetch, retry_for_s=self.retry_for_s).start()
            else:
                log.info("adopted the weight fetch started %.3f s earlier",
                         time.monotonic() - fetcher.t_start)
            self._fetcher = fetcher
            self._state = "downloading"
            t_wait = time.monotonic()
            fetcher.wait()
            if fetcher.error is not None and fetcher._fetch is not self._fetch:
                # the prefetch failed for good: once more with this host's own fetch, whose
                # error may say more (e.g. which cache directory is full)
                fetcher = self._fetcher = Fetcher(storage, self._fetch,
                                                  retry_for_s=self.retry_for_s).start()
                fetcher.wait()
            self._fetcher = None
            self._gauge("fetch_wait", time.monotonic() - t_wait)
            if fetcher.error is not None:
                raise fetcher.error
            result = fetcher.result
            self.sha256 = result.sha256
            self._phase("download", 0.0 if result.cached else result.download_s)
            self._phase("verify", result.verify_s)
            self._state = "loading"
            t0 = time.perf_counter()
            model = self.loader(result.path, self.settings.model)
            self._phase("load", time.perf_counter() - t0)
            self.model = model
            self._state = "ready"
            self._gauge("ready", process_age_s())
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
        self._gauge(name, seconds)

    def _gauge(self, name: str, seconds: float | None) -> None:
        if self.metrics is not None and seconds is not None:
            self.metrics.cold_start.labels(phase=name).set(seconds)

    def ready(self) -> tuple[bool, str]:
        if self.model is not None:
            return True, "ready"
        if self._failed:
            return False, f"failed: {self._failed}"
        fetcher = self._fetcher
        if fetcher is not None and self._state == "downloading":
            return False, fetcher.state
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
