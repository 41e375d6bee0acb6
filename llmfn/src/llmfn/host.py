"""ModelHost: pulls the weights and loads the model in the background, and reports readiness.

``start()`` returns at once (func runs ``start`` before listening, and a slow pull inside it
would be killed by the liveness probe). ``ready()`` is False with a reason ("downloading 41 %",
"waiting for S3: ...", "loading") until the model is loaded; ``alive()`` turns False only when
loading failed for good, so the kubelet restarts the pod.

Cold start overlaps what it can. A function's module calls :func:`prefetch` before its heavy
imports: the weight fetch starts on its own thread at once (it hashes while downloading, see
llmfn.weights; a ``file://`` model is hashed there too). Once the module has imported what its
loader needs (llama_cpp, numpy), it calls :func:`preload`: the model loads (llama.cpp mmaps the
file) on another thread as soon as the file is complete and verified, while the main thread
goes on importing the web stack (Flask, prometheus_client, ...). llama.cpp's load runs in C
with the GIL released (but for its log callback: PRELOAD_SWITCH_INTERVAL_S), so on two cores
it mostly overlaps the imports. The ModelHost
built later adopts the fetch and the load when its settings and loader are the same ones, and
otherwise discards the early model and loads its own.

A transient fetch failure (S3 unreachable, 5xx, a timeout) is retried with exponential backoff
(1 s doubling to 30 s, with jitter: llmfn.backoff) for ``retry_for_s``; readiness names the
reason and the next try meanwhile, and liveness stays True, so the pod becomes ready when S3
returns, without a restart. Anything else (not found, access denied, a checksum mismatch) fails
for good.

Phase timers (``cold_start_s``, and the ``llmfn_cold_start_seconds{phase}`` gauge): download,
verify (hash tail after the last byte), load (llama.cpp, possibly overlapping the imports);
the gauge also gets ``import`` (process start to ``ModelHost.start``: interpreter and
imports), ``fetch_wait`` (how long the host waited for the fetch after the imports),
``load_wait`` (how long it then waited for an early load still running) and ``ready``
(process start to loaded).
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from . import weights
from .backoff import Backoff
from .settings import ModelSettings, ServerSettings, Settings, StorageSettings, build, with_defaults

log = logging.getLogger(__name__)

Loader = Callable[[str, ModelSettings], Any]
RETRY = Backoff(first_s=1.0, max_s=30.0)  # between fetch attempts while S3 fails transiently
RETRY_FOR_S = 900.0  # transient failures are retried this long, then the fetch fails for good
# llama.cpp reports every step of a load through llama-cpp-python's log callback, a Python
# function: about 2,300 calls for SmolLM2, each of which must take the GIL. Beside a busy
# Python thread (the main thread importing), Python's default switch interval (5 ms) made
# each call wait for it: the load took 0.56 s instead of 0.29 s alone; at 0.5 ms, 0.33 s.
PRELOAD_SWITCH_INTERVAL_S = 0.0005
# With nothing in the cache, the download is on the cold start's critical path and the imports
# are not, but both are Python: threads share the GIL, so boto3's import and client set-up
# (0.3 s of CPU) took twice as long beside the function's imports. prefetch() lets the fetch
# run alone until its set-up is over (bytes flow, or it waits to retry, or it ended), at most
# this long, and then the imports overlap the transfer.
PREFETCH_WAIT_S = 2.0


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
        # set once the set-up (boto3's import, the client, the HEAD) is over: the first bytes
        # arrived, it waits to retry, or it ended
        self.past_setup = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-fetch", daemon=True)

    def start(self) -> Fetcher:
        self.t_start = time.monotonic()
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def _progress(self, done: int, total: int) -> None:
        self.past_setup.set()
        pct = 100.0 * done / total if total else 0.0
        self.state = f"downloading {pct:.0f} % ({done / 2**20:.0f}/{total / 2**20:.0f} MiB)"

    def _run(self) -> None:
        delays = RETRY.delays()
        give_up = time.monotonic() + self.retry_for_s
        try:
            while True:
                try:
                    self.result = self._fetch(self.storage, progress=self._progress)
                    return
                except weights.WeightsError as err:
                    delay = next(delays)
                    if not err.transient or time.monotonic() + delay > give_up:
                        raise
                    self.retries += 1
                    self.past_setup.set()
                    reason = _reason(err)
                    log.warning("fetching the weights failed (%s); retry %d in %.0f s",
                                reason, self.retries, delay)
                    until = time.monotonic() + delay
                    while (left := until - time.monotonic()) > 0:
                        self.state = (f"waiting for S3: {reason} (retry {self.retries} in "
                                      f"{left:.0f} s)")
                        time.sleep(min(left, 1.0))
                    self.state = f"downloading (retry {self.retries} after: {reason})"
        except Exception as err:  # reported by the ModelHost
            self.error = err
        finally:
            self.t_end = time.monotonic()
            self.past_setup.set()
            self._done.set()


_early: dict[StorageSettings, Fetcher] = {}
_early_lock = threading.Lock()


def prefetch(env: Mapping[str, str] | None = None, *, wait_s: float = PREFETCH_WAIT_S,
             defaults: Mapping[str, str] | None = None) -> Fetcher | None:
    """Start fetching the weights that ``env`` (default: the process environment, over
    ``defaults``) names, now, on a thread; a ModelHost built later with the same storage
    settings adopts the fetch. Call it before the heavy imports. When the file must come from
    S3 (not pinned in the cache), return only once the fetch's set-up is over, or after
    ``wait_s``: see PREFETCH_WAIT_S. Never raises: with bad settings it does nothing and the
    ModelHost reports the problem."""
    try:
        merged = with_defaults(env, defaults)
        _ensure_log_handler(build(ServerSettings, merged).log_level)
        storage = build(StorageSettings, merged)
        if not storage.model_uri.startswith(("s3://", "file://")):
            return None
        fetcher = _early_fetcher(storage)
        if (wait_s > 0 and storage.model_uri.startswith("s3://")
                and not weights.pinned_in_cache(storage)):
            t0 = time.monotonic()
            fetcher.past_setup.wait(wait_s)
            log.debug("prefetch: the fetch's set-up took %.3f s", time.monotonic() - t0)
        return fetcher
    except Exception:  # noqa: BLE001  (the ModelHost fetches and reports instead)
        log.debug("prefetch skipped", exc_info=True)
        return None


def _early_fetcher(storage: StorageSettings) -> Fetcher:
    with _early_lock:
        if storage not in _early:
            _early[storage] = Fetcher(storage).start()
        return _early[storage]


class Preload:
    """A model load started before the ModelHost exists: on its own thread, it waits for the
    fetch and then calls ``loader(path, model)``."""

    def __init__(self, fetcher: Fetcher, loader: Loader, model: ModelSettings):
        self.fetcher = fetcher
        self.loader = loader
        self.model_settings = model
        self.model: Any = None
        self.error: Exception | None = None
        self.load_s = 0.0
        self._thread = threading.Thread(target=self._run, name="model-preload", daemon=True)

    def start(self) -> Preload:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.fetcher.wait()
        if self.fetcher.error is not None or self.fetcher.result is None:
            return  # the ModelHost reports (and may retry) the fetch
        before = sys.getswitchinterval()
        sys.setswitchinterval(min(before, PRELOAD_SWITCH_INTERVAL_S))
        t0 = time.perf_counter()
        try:
            self.model = self.loader(self.fetcher.result.path, self.model_settings)
        except Exception as err:  # noqa: BLE001  (raised again by take())
            self.error = err
        finally:
            self.load_s = time.perf_counter() - t0
            sys.setswitchinterval(before)

    def matches(self, fetcher: Fetcher, loader: Loader, model: ModelSettings) -> bool:
        """Whether this load is the one a host with these would do itself."""
        return (fetcher is self.fetcher and model == self.model_settings
                and same_loader(loader, self.loader))

    def take(self) -> tuple[Any, float]:
        """Wait for the load; the model and its load seconds, or the loader's exception."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.model, self.load_s

    def discard(self) -> None:
        """Wait for the load and free what it loaded (a host with other settings loads its own)."""
        self._thread.join()
        model, self.model = self.model, None
        if model is not None and hasattr(model, "close"):
            model.close()


_preloads: dict[StorageSettings, Preload] = {}


def preload(make_loader: Callable[[Mapping[str, str]], Loader],
            env: Mapping[str, str] | None = None, *,
            defaults: Mapping[str, str] | None = None) -> Preload | None:
    """Start loading the model that ``env`` (default: the process environment, over
    ``defaults``) names, on a thread, as soon as its fetch (:func:`prefetch`'s, or one started
    now) has the file; ``make_loader(env)`` gives the loader. A ModelHost built later adopts
    the load when its storage and model settings and its loader are the same (see
    :func:`same_loader`). Call it once the loader's own heavy imports are done, before the
    web stack's. Never raises: with bad settings it does nothing and the ModelHost reports."""
    try:
        merged = with_defaults(env, defaults)
        settings = Settings.from_mapping(merged)
        settings.require_model()
        loader = make_loader(merged)
        fetcher = _early_fetcher(settings.storage)
        with _early_lock:
            if settings.storage in _preloads:
                return _preloads[settings.storage]
            pre = _preloads[settings.storage] = Preload(fetcher, loader, settings.model).start()
            return pre
    except Exception:  # noqa: BLE001
        log.debug("preload skipped", exc_info=True)
        return None


def start_model_early(make_loader: Callable[[Mapping[str, str]], Loader],
                      defaults: Mapping[str, str]) -> Preload | None:
    """The cold start's head start, called once at import by a function's ``early`` module,
    which its package imports before anything else: the weight fetch starts on a thread
    (:func:`prefetch`); ``make_loader`` then imports the loader's own modules (llama_cpp,
    numpy) while it runs; the model loads on another thread as soon as the file is there
    (:func:`preload`), while the package goes on importing the web stack. Never raises."""
    prefetch(defaults=defaults)
    return preload(make_loader, defaults=defaults)


def same_loader(a: Loader, b: Loader) -> bool:
    """Loaders that load the same thing: equal, or partials of the same function with equal
    arguments (``functools.partial(load_engine, gen=settings)``)."""
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    return a == b


def _adopt(storage: StorageSettings) -> tuple[Fetcher | None, Preload | None]:
    with _early_lock:
        return _early.pop(storage, None), _preloads.pop(storage, None)


def _ensure_log_handler(log_level: str) -> None:
    """Make llmfn's INFO lines (download progress, phases) reach stderr when the server
    configured no logging (gunicorn configures only its own loggers), at ``LOG_LEVEL``."""
    import logging as _logging

    root, ours = _logging.getLogger(), _logging.getLogger("llmfn")
    if root.handlers or ours.handlers:
        return
    handler = _logging.StreamHandler()
    handler.setFormatter(_logging.Formatter(
        "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    ours.addHandler(handler)
    level = log_level.upper()
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
            _ensure_log_handler(self.settings.server.log_level)
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
            fetcher, pre = _adopt(storage)
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
            assert result is not None  # a fetcher that ended without an error has its result
            self.sha256 = result.sha256
            self._phase("download", 0.0 if result.cached else result.download_s)
            self._phase("verify", result.verify_s)
            self._state = "loading"
            if pre is not None and pre.matches(fetcher, self.loader, self.settings.model):
                t_wait = time.monotonic()
                model, load_s = pre.take()
                self._gauge("load_wait", time.monotonic() - t_wait)
                log.info("adopted the model load started early (%.3f s)", load_s)
            else:
                if pre is not None:
                    log.info("the early load is not this host's (other settings, or its "
                             "fetch failed): loading here")
                    pre.discard()
                t0 = time.perf_counter()
                model = self.loader(result.path, self.settings.model)
                load_s = time.perf_counter() - t0
            self._phase("load", load_s)
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
