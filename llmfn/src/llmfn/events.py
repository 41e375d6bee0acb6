"""Inference CloudEvents: the event schema and a non-blocking background emitter.

Wire format (CloudEvents 1.0, HTTP binding, binary content mode): attributes travel as
``ce-*`` headers, ``data`` is the JSON body with ``Content-Type: application/json``.

Source scheme: ``/llmfn/<function>``, and ``/llmfn/<function>/<service>/<revision>`` when both
``K_SERVICE`` and ``K_REVISION`` are set (always the case under Knative; neither is set when
run locally). With only one of them set, the plain ``/llmfn/<function>`` is used. Consumers
treat (source, id) as the identity of an event, as delivery is at least once.

Extensions come from ``K_CE_OVERRIDES`` (Knative SinkBinding contract:
``{"extensions": {"name": "value"}}``); they are checked when the emitter is built.

Delivery: ``emit`` only puts the event into a bounded queue (``EVENTS_QUEUE_SIZE``); one daemon
thread POSTs events to ``K_SINK`` and retries connection errors, timeouts, 429 and 5xx with
exponential backoff and jitter (``EVENTS_BACKOFF_S`` doubling, capped at 30 s, at most
``EVENTS_MAX_ATTEMPTS`` attempts). Any other non-2xx answer is a permanent failure.
Without ``K_SINK`` the emitter is disabled: no thread, ``emit`` returns False.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import typing
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from llmfn.backoff import Backoff
from llmfn.protocol import UNSET, Model, UnsetType, field, to_builtins
from llmfn.settings import EventSettings, SettingsError

if typing.TYPE_CHECKING:  # imported where used, on the sender thread, not at start
    import requests
    from cloudevents.core.bindings.http import HTTPMessage

log = logging.getLogger(__name__)

TYPE_PREFIX = "dev.llmfn.inference."
INFERENCE_COMPLETED = "dev.llmfn.inference.completed.v1"

_MAX_BACKOFF_S = 30.0
_WARN_INTERVAL_S = 10.0
# Attribute names defined by the CloudEvents 1.0 spec; an extension must not reuse them.
_RESERVED = {"id", "source", "type", "specversion", "time", "subject", "datacontenttype",
             "dataschema", "data"}
_EXTENSION_NAME = re.compile(r"^[a-z0-9]+$")  # CloudEvents 1.0 "Attribute Naming Convention"


API_OF_ROUTE = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                "/v1/responses": "responses", "/v1/messages": "messages",
                "/v1/embeddings": "embeddings"}
"""The inference event's ``api`` for a route (OpenAI's and Anthropic's paths, whichever
function serves them)."""


def api_of(endpoint: object) -> str | None:
    """Which API served a request on ``endpoint`` (:data:`API_OF_ROUTE`); None for another
    route. The emitter's default for ``api``, and audit's reading of events sent before it."""
    return API_OF_ROUTE.get(endpoint) if isinstance(endpoint, str) else None


def utc_now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with millisecond precision and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class InferenceRecord(Model, kw_only=True):
    """``data`` of a ``dev.llmfn.inference.completed.v1`` event (docs/architecture.md).

    Fields in the order of the table; keyword-only, so defaults may sit between them. The
    defaults are the emitter's: an event received (:func:`validate_inference_data`) must carry
    every field but :data:`_OPTIONAL`.
    """
    request_id: str
    function: str
    model: str
    model_sha256: str
    service: str = ""
    revision: str = ""
    endpoint: str
    api: str | None = None  # chat | completions | responses | messages | embeddings
    status: int
    error_code: str | None = None
    prompt_tokens: int
    completion_tokens: int
    input_count: int
    ttft_s: float | None = None
    duration_s: float
    tokens_per_s: float | None = None
    finish_reason: str | None = None
    cold_start: bool
    stream: bool
    output_format: str = "text"
    key_id: str | None = None  # llmfn.auth.key_id of the caller's bearer key (never the key)
    time: str = field(default_factory=utc_now_rfc3339)
    prompt: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        if self.api is None:  # not given: the API of the route
            self.api = api_of(self.endpoint)

    def to_data(self, include_text: bool) -> dict[str, Any]:
        """The event data; ``prompt`` and ``output`` only when ``include_text`` (and set)."""
        data = to_builtins(self)
        for key in _TEXT_FIELDS:
            if not include_text or data[key] is None:
                del data[key]
        return data


_TEXT_FIELDS = ("prompt", "output")
# All fields but these are required in an event received (output_format, key_id and api came
# later: older events lack them; the text fields are left out when not sent, never sent as null).
_OPTIONAL = (*_TEXT_FIELDS, "output_format", "key_id", "api")


def _received(record: type[Model]) -> tuple[type[msgspec.Struct], dict[str, Any]]:
    """The record's fields as an event received must carry them (all required but
    :data:`_OPTIONAL`, the text fields a string when present; other keys pass), and each
    field's type."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    types: dict[str, Any] = {}
    for f in msgspec.structs.fields(record):
        types[f.name] = str if f.name in _TEXT_FIELDS else f.type
        if f.name in _OPTIONAL:
            fields.append((f.name, types[f.name] | UnsetType, UNSET))
        else:
            fields.append((f.name, f.type))
    return msgspec.defstruct("InferenceData", fields, bases=(Model,), kw_only=True), types


InferenceData, _FIELD_TYPES = _received(InferenceRecord)
"""An inference event's ``data`` as audit accepts it (:func:`validate_inference_data`)."""
_WANT = {"int": "int", "float": "number", "str": "str", "bool": "bool"}


def validate_inference_data(data: Any) -> list[str]:
    """Problems with an inference event's ``data``: missing fields, wrong types, a ``time``
    that is not RFC 3339 (extras pass)."""
    try:
        msgspec.convert(data, InferenceData, strict=True)
    except msgspec.ValidationError:
        return _problems(data)
    if not _is_rfc3339(data["time"]):
        return [f"time must be an RFC 3339 timestamp, got {data['time']!r}"]
    return []


def _problems(data: Any) -> list[str]:
    """Every problem of ``data`` that failed :data:`InferenceData`, field by field."""
    if not isinstance(data, dict):
        return [f"data must be a JSON object, got {type(data).__name__}"]
    problems = []
    for key, kind in _FIELD_TYPES.items():
        if key not in data:
            if key not in _OPTIONAL:
                problems.append(f"{key} is missing")
            continue
        try:
            msgspec.convert(data[key], kind, strict=True)
        except msgspec.ValidationError as err:
            want = re.match(r"Expected `([^`]+)`", str(err))
            names = want.group(1).split(" | ") if want else [str(err)]
            text = " or ".join(_WANT.get(n, n) for n in names if n != "null")
            text += " or null" if "null" in names else ""
            problems.append(f"{key} must be {text}, got {type(data[key]).__name__}")
            continue
        if key == "time" and not _is_rfc3339(data[key]):
            problems.append(f"time must be an RFC 3339 timestamp, got {data[key]!r}")
    return problems


def _is_rfc3339(value: str) -> bool:
    try:
        return datetime.fromisoformat(value).tzinfo is not None and "T" in value.upper()
    except ValueError:
        return False


def event_source(function: str, service: str = "", revision: str = "") -> str:
    """The CloudEvents ``source`` of this process (see the module docstring for the scheme)."""
    if service and revision:
        return f"/llmfn/{function}/{service}/{revision}"
    return f"/llmfn/{function}"


def parse_ce_overrides(raw: str) -> dict[str, str]:
    """Extensions from ``K_CE_OVERRIDES`` (``{"extensions": {...}}``); SettingsError if bad."""
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f'K_CE_OVERRIDES must be JSON {{"extensions": {{...}}}}: {exc}') \
            from None
    extensions = doc.get("extensions", {}) if isinstance(doc, dict) else None
    if not isinstance(extensions, dict):
        raise SettingsError('K_CE_OVERRIDES must be a JSON object {"extensions": {...}}')
    out = {}
    for name, value in extensions.items():
        if not _EXTENSION_NAME.match(name) or name in _RESERVED:
            raise SettingsError(f"K_CE_OVERRIDES extension name {name!r} must be lowercase "
                                "letters and digits and not a CloudEvents attribute")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (str, int)):
            raise SettingsError(f"K_CE_OVERRIDES extension {name!r} must be a string, "
                                "integer or boolean")
        out[name] = str(value)
    return out


class _RateLimitedLog:
    """Log a warning at most once per interval, with how many were suppressed."""

    def __init__(self, interval_s: float = _WARN_INTERVAL_S):
        self._interval_s = interval_s
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._next = self._suppressed, 0, now + self._interval_s
        log.warning(msg + " (%d similar suppressed)", *args, suppressed)


@dataclass(frozen=True)
class _Pending:
    event_type: str
    data: dict[str, Any]
    id: str
    subject: str | None
    time: datetime
    source: str | None = None  # None: the emitter's own
    extensions: tuple[tuple[str, str], ...] = ()


_STOP = object()


class EventEmitter:
    """Sends CloudEvents to ``K_SINK`` from one daemon thread; ``emit`` never blocks."""

    def __init__(self, settings: EventSettings, *, function: str,
                 registry: CollectorRegistry | None = None,
                 session: requests.Session | None = None):
        if settings.sink and not settings.sink.startswith(("http://", "https://")):
            raise SettingsError(f"K_SINK must be an http(s) URL, got {settings.sink!r}")
        self.settings = settings
        self.source = event_source(function, settings.service, settings.revision)
        self.extensions = parse_ce_overrides(settings.ce_overrides)
        self.enabled = bool(settings.sink)
        registry = registry if registry is not None else CollectorRegistry()
        self._sent = Counter("llmfn_events_sent_total", "CloudEvents accepted by the sink",
                             registry=registry)
        self._dropped = Counter("llmfn_events_dropped_total", "CloudEvents given up on",
                                ["reason"], registry=registry)
        for reason in ("queue_full", "failed", "shutdown"):
            self._dropped.labels(reason)
        self._retries = Counter("llmfn_events_retries_total", "CloudEvent delivery retries",
                                registry=registry)
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        Gauge("llmfn_events_queue_depth", "CloudEvents waiting to be sent",
              registry=registry).set_function(self._queue.qsize)
        self._cond = threading.Condition()
        self._pending = 0  # queued + in flight, guarded by _cond
        self._closed = False
        self._stop = threading.Event()
        self._own_session = session is None
        self._session = session  # made by the sender thread when it first sends: requests is
        # imported then, not on a cold start's path
        self._warn_full = _RateLimitedLog()
        self._warn_failed = _RateLimitedLog()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name=f"llmfn-events-{function}",
                                            daemon=True)
            self._thread.start()

    def emit(self, event_type: str, data: dict[str, Any], *, id: str | None = None,
             subject: str | None = None, source: str | None = None,
             extensions: dict[str, str] | None = None) -> bool:
        """Queue an event; False if disabled, closed or the queue is full (never blocks).

        ``source`` replaces this process's own; ``extensions`` (e.g. ``traceparent``) are added
        to those of ``K_CE_OVERRIDES``.
        """
        item = _Pending(event_type, dict(data), id or uuid.uuid4().hex, subject or None,
                        datetime.now(UTC), source,
                        tuple(sorted((extensions or {}).items())))
        with self._cond:
            if not self.enabled or self._closed:
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._dropped.labels("queue_full").inc()
                self._warn_full.warning("event queue full (%d), dropped %s id=%s",
                                        self.settings.queue_size, event_type, item.id)
                return False
            self._pending += 1
        return True

    def emit_inference(self, record: InferenceRecord, *, id: str | None = None,
                       source: str | None = None,
                       extensions: dict[str, str] | None = None) -> bool:
        """Emit ``record`` as INFERENCE_COMPLETED: id = ``id`` or the request id, subject =
        model; ``source`` and ``extensions`` as in :meth:`emit`."""
        return self.emit(INFERENCE_COMPLETED, record.to_data(self.settings.include_text),
                         id=id or record.request_id, subject=record.model, source=source,
                         extensions=extensions)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is delivered or given up; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop taking events, flush until ``timeout_s`` (default EVENTS_FLUSH_S), stop.

        Events still queued at the deadline are dropped (reason ``shutdown``); an attempt in
        flight then finishes in the background (bounded by EVENTS_TIMEOUT_S), without retries.
        Returns whether everything was flushed.
        """
        timeout_s = self.settings.flush_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            already, self._closed = self._closed, True
        if already or self._thread is None:
            return self.flush(0)
        flushed = self.flush(timeout_s)
        self._stop.set()
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        if dropped:
            self._dropped.labels("shutdown").inc(dropped)
            log.warning("dropped %d queued events at shutdown (flush deadline %.1fs)",
                        dropped, timeout_s)
            self._done(dropped)
        self._queue.put_nowait(_STOP)  # room: producers are shut out and the queue was drained
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._own_session and self._session is not None and not self._thread.is_alive():
            self._session.close()
        return flushed

    def _done(self, n: int = 1) -> None:
        with self._cond:
            self._pending -= n
            if self._pending <= 0:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._deliver(item)
            except Exception:  # never let the sender thread die
                self._dropped.labels("failed").inc()
                log.exception("sending event id=%s failed", item.id)
            finally:
                self._done()

    def _message(self, item: _Pending) -> HTTPMessage:
        attributes: dict[str, Any] = {**self.extensions, **dict(item.extensions),
                                      "type": item.event_type,
                                      "source": item.source or self.source, "id": item.id,
                                      "time": item.time, "datacontenttype": "application/json"}
        if item.subject:
            attributes["subject"] = item.subject
        from cloudevents.core.bindings.http import to_binary_event
        from cloudevents.core.v1.event import CloudEvent

        return to_binary_event(CloudEvent(attributes, item.data))

    def _deliver(self, item: _Pending) -> None:
        message = self._message(item)
        delays = Backoff(min(self.settings.backoff_s, _MAX_BACKOFF_S), _MAX_BACKOFF_S).delays()
        for attempt in range(1, self.settings.max_attempts + 1):
            outcome, detail, retry_after_s = self._post(message)
            if outcome == "ok":
                self._sent.inc()
                return
            if outcome == "fatal" or attempt == self.settings.max_attempts:
                break
            # a sink's Retry-After wins over the jittered backoff
            wait_s = min(max(next(delays), retry_after_s), _MAX_BACKOFF_S)
            self._retries.inc()
            if self._stop.wait(wait_s):
                detail += ", shutting down"
                break
        self._dropped.labels("failed").inc()
        self._warn_failed.warning("event %s id=%s not delivered after %d attempt(s): %s",
                                  item.event_type, item.id, attempt, detail)

    def _post(self, message: HTTPMessage) -> tuple[str, str, float]:
        """One POST: ("ok" | "retry" | "fatal", detail, Retry-After seconds or 0)."""
        import requests

        if self._session is None:
            self._session = requests.Session()
        try:
            resp = self._session.post(self.settings.sink, data=message.body,
                                      headers=message.headers, timeout=self.settings.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            return "retry", type(exc).__name__, 0.0
        except requests.RequestException as exc:
            return "fatal", type(exc).__name__, 0.0
        with resp:
            status = resp.status_code
            retry_after = resp.headers.get("Retry-After", "")
        if 200 <= status < 300:
            return "ok", str(status), 0.0
        if status == 429 or status >= 500:
            return "retry", f"HTTP {status}", float(retry_after) if retry_after.isdigit() else 0.0
        return "fatal", f"HTTP {status}", 0.0
