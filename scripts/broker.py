#!/usr/bin/env python3
"""A local stand-in for Knative's Broker, for ``make run`` on one machine (not for production).

The Trigger manifests in ``eventing/`` stay the single source of truth: every ``kind: Trigger``
document of ``eventing/*.yaml`` is read (``spec.broker`` is ignored: there is one broker) with
its filters, subscriber and delivery. A subscriber ``ref`` (a Service name: generate, embed,
audit) maps to a local base URL given by the caller; an optional ``uri`` resolves against it.

The data plane follows the Broker contract (knative/specs ``data-plane.md``):

- Ingress ``POST /`` takes one CloudEvent (binary or structured mode) and answers 202 once the
  event is queued for *every* matching Trigger, 400 when it is not a CloudEvent, and 503 with
  ``Retry-After`` when a matching Trigger's queue is full (then it is queued for none: the
  producer's retry cannot duplicate it). An event no Trigger matches is accepted and dropped.
- Each Trigger has its own bounded queue and worker threads. A delivery is a binary-mode POST
  with ``Prefer: reply``; it succeeds on 2xx. Connection errors, timeouts, 5xx, 404, 408, 409
  and 429 are retried (``SelectiveRetry`` of knative/eventing), other answers are not.
  ``retry`` retries at most, ``backoffDelay`` times 2**i (exponential) or times i (linear) before
  retry i = 0, 1, ... (as the dispatcher computes it), ``timeout`` per attempt. A 429/503's
  ``Retry-After`` is honoured only when ``retryAfterMax`` is set (Knative's opt-in), capped by
  it; the longer of it and the backoff is waited.
- A 2xx answer carrying a CloudEvent (``ce-*`` headers or ``application/cloudevents+json``) is
  a reply: it goes back into the ingress (same filtering). Loop guard: ``knativebrokerttl``
  (255 when absent) is taken off the delivered event and put back on the reply minus one; an
  event whose TTL is 0 is dropped at the ingress.
- After the last failed attempt the event goes to the ``deadLetterSink`` (same retries) with
  ``knativeerrordest`` (subscriber URL), ``knativeerrorcode`` (last status; 500 for a network
  error or timeout) and ``knativeerrordata`` (base64 of the failing response body, cut to
  1024 characters). Without a sink it is logged and dropped, as Knative does.

Triggers can also be given in code (:class:`Trigger`, whose subscriber may be a callable): tests
use them, and ``make run`` adds :func:`replies_trigger`, which appends reply events to a JSONL
file. Events are in memory only: :meth:`Broker.stop` closes the ingress and delivers what is
queued within its grace; whatever is left after it is logged as lost.

Standalone: ``python scripts/broker.py --service audit=http://127.0.0.1:8083 ...``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
import yaml

log = logging.getLogger("llmfn.broker")

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTING_DIR = REPO_ROOT / "eventing"
DEFAULT_PORT = 8080
DEFAULT_TTL = 255
TTL_ATTR = "knativebrokerttl"
ARRIVAL_ATTR = "knativearrivaltime"
ERROR_DATA_MAX = 1024  # knative/eventing attributes.KnativeErrorDataExtensionMaxLength
MAX_BODY = 16 * 1024 * 1024
DEFAULT_TIMEOUT_S = 300.0  # per attempt when a Trigger sets no `timeout` (a generation can be slow)
REPLY_WAIT_S = 30.0  # how long a reply waits for room in full queues before it counts as failed
RETRYABLE = {404, 408, 409, 429}  # and every 5xx
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
                       r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class BadEvent(ValueError):
    """The request does not carry one acceptable CloudEvent (400)."""


# -- events on the wire ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """A CloudEvent as the broker moves it: context attributes (extensions included) as strings,
    ``data`` as the bytes it came with. Nothing is invented (no id, no time)."""
    attrs: Mapping[str, str]
    data: bytes = b""

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def replace(self, drop: Iterable[str] = (), **values: Any) -> Event:
        dropped = set(drop)
        attrs = {k: v for k, v in self.attrs.items() if k not in dropped}
        attrs.update({k: str(v) for k, v in values.items()})
        return Event(attrs, self.data)

    def to_http(self) -> tuple[dict[str, str], bytes]:
        """Binary content mode: ``ce-*`` headers, datacontenttype as Content-Type."""
        headers = {("content-type" if k == "datacontenttype" else f"ce-{k}"):
                   (v if k == "datacontenttype" else quote(v, safe=_HEADER_SAFE))
                   for k, v in self.attrs.items()}
        return headers, self.data

    @staticmethod
    def is_event(headers: Mapping[str, str]) -> bool:
        lower = {k.lower(): v for k, v in headers.items()}
        return "ce-specversion" in lower or _media(lower) in (STRUCTURED, BATCH)

    @classmethod
    def from_http(cls, headers: Mapping[str, str], body: bytes) -> Event:
        """Binary or structured mode; :class:`BadEvent` says why not."""
        lower = {k.lower(): v for k, v in headers.items()}
        media = _media(lower)
        if "ce-specversion" in lower:
            attrs = {k[3:]: unquote(v) for k, v in lower.items() if k.startswith("ce-")}
            if lower.get("content-type"):
                attrs["datacontenttype"] = lower["content-type"]
            data = body
        elif media == STRUCTURED:
            attrs, data = _structured(body)
        elif media == BATCH:
            raise BadEvent("batch mode is not accepted: one event per request")
        else:
            raise BadEvent("not a CloudEvent: expected ce-* headers (binary mode) or "
                           "Content-Type application/cloudevents+json (structured mode)")
        if attrs.get("specversion") != "1.0":
            raise BadEvent(f"specversion must be 1.0, got {attrs.get('specversion')!r}")
        missing = [a for a in ("id", "source", "type") if not attrs.get(a)]
        if missing:
            raise BadEvent(f"missing required attribute(s): {', '.join(missing)}")
        bad = [a for a in attrs if not _NAME.match(a)]
        if bad:
            raise BadEvent(f"invalid attribute name(s): {bad}")
        return cls(attrs, data)

    def data_for_humans(self) -> Any:
        """``data`` decoded for a log: JSON when it is JSON, else text, else base64."""
        try:
            text = self.data.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(self.data).decode()}
        if _is_json(self.get("datacontenttype")):
            try:
                return json.loads(text) if text else None
            except ValueError:
                pass
        return text


def _media(lower_headers: Mapping[str, str]) -> str:
    return lower_headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _structured(body: bytes) -> tuple[dict[str, str], bytes]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise BadEvent("structured mode body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadEvent("structured mode body is not a JSON object")
    attrs: dict[str, str] = {}
    for key, value in doc.items():
        if key in ("data", "data_base64") or value is None:
            continue
        if isinstance(value, bool):
            attrs[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            attrs[key] = str(value)
        else:
            raise BadEvent(f"attribute {key!r} is not a string, number or boolean")
    if "data_base64" in doc:
        try:
            return attrs, base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise BadEvent("data_base64 is not base64") from None
    if "data" not in doc:
        return attrs, b""
    data = doc["data"]
    attrs.setdefault("datacontenttype", "application/json")
    if isinstance(data, str) and not _is_json(attrs["datacontenttype"]):
        return attrs, data.encode("utf-8")
    return attrs, json.dumps(data, ensure_ascii=False).encode("utf-8")


# -- triggers ------------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """ISO 8601 duration (``PT0.5S``, ``PT1M30S``, ``P1D``) in seconds."""
    m = _DURATION.match(text or "")
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    weeks, days, hours, minutes, seconds = (float(g or 0) for g in m.groups())
    return (((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True)
class Delivery:
    """A Trigger's ``spec.delivery`` (durations in seconds)."""
    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay_s: float = 0.0
    timeout_s: float | None = None
    retry_after_max_s: float | None = None
    dead_letter_sink: str | None = None

    def backoff_s(self, i: int) -> float:
        """The wait before retry ``i`` (0-based), as knative/eventing's RetryConfig does."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * i
        return self.backoff_delay_s * 2 ** i


@dataclass
class Trigger:
    """One Trigger: ``filters`` (Knative's SQL-less dialect, all must match), else the legacy
    exact-match ``attributes``; ``subscriber`` is a URL or a callable (an exception = 500)."""
    name: str
    subscriber: str | Callable[[Event], None]
    filters: list[dict] = field(default_factory=list)
    attributes: dict[str, str] | None = None
    delivery: Delivery = field(default_factory=Delivery)

    def __post_init__(self):
        for f in self.filters:
            _check_filter(f)

    def matches(self, event: Event) -> bool:
        if self.filters:
            return all(_match(f, event) for f in self.filters)
        if self.attributes:  # "" is Knative's "any value"
            return all(v == "" or event.get(k) == v for k, v in self.attributes.items())
        return True

    @property
    def target(self) -> str:
        return self.subscriber if isinstance(self.subscriber, str) else \
            f"python:{getattr(self.subscriber, '__name__', type(self.subscriber).__name__)}"


_DIALECT = ("exact", "prefix", "suffix", "all", "any", "not")


def _check_filter(f: Any) -> None:
    if not isinstance(f, dict) or len(f) != 1 or next(iter(f)) not in _DIALECT:
        if isinstance(f, dict) and "cesql" in f:
            raise ValueError("CESQL filters are not supported by the local broker")
        raise ValueError(f"unsupported filter {f!r}: one of {', '.join(_DIALECT)} expected")
    (op, arg), = f.items()
    if op in ("all", "any"):
        if not isinstance(arg, list):
            raise ValueError(f"{op} takes a list of filters, got {arg!r}")
        for sub in arg:
            _check_filter(sub)
    elif op == "not":
        _check_filter(arg)
    elif not isinstance(arg, dict) or not arg or \
            not all(isinstance(v, str) and v for v in arg.values()):
        raise ValueError(f"{op} takes attribute: non-empty value, got {arg!r}")


def _match(f: dict, event: Event) -> bool:
    (op, arg), = f.items()
    if op == "all":
        return all(_match(sub, event) for sub in arg)
    if op == "any":
        return any(_match(sub, event) for sub in arg)
    if op == "not":
        return not _match(arg, event)
    test = {"exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith}[op]
    return all(event.get(k) is not None and test(event.get(k), v) for k, v in arg.items())


def resolve(dest: Mapping | None, services: Mapping[str, str], where: str) -> str | None:
    """A Destination (``ref`` and/or ``uri``) as a URL; None when its ref is not served here."""
    if not dest:
        return None
    uri, ref = dest.get("uri"), dest.get("ref")
    if ref:
        base = services.get(ref.get("name"))
        if base is None:
            log.warning("%s: no local service %r (known: %s)", where, ref.get("name"),
                        ", ".join(sorted(services)))
            return None
        base = base if urlsplit(base).path else base + "/"
        return urljoin(base, uri) if uri else base
    if uri and urlsplit(uri).scheme in ("http", "https"):
        return uri
    raise ValueError(f"{where}: destination needs a ref or an absolute uri, got {dest!r}")


def parse_delivery(spec: Mapping | None, services: Mapping[str, str], where: str) -> Delivery:
    spec = spec or {}
    known = {"retry", "backoffPolicy", "backoffDelay", "timeout", "retryAfterMax",
             "deadLetterSink"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown delivery field(s) {sorted(unknown)}")
    policy = spec.get("backoffPolicy", "exponential")
    if policy not in ("linear", "exponential"):
        raise ValueError(f"{where}: backoffPolicy must be linear or exponential")
    duration = lambda key: parse_duration(spec[key]) if spec.get(key) else None  # noqa: E731
    return Delivery(retry=int(spec.get("retry") or 0), backoff_policy=policy,
                    backoff_delay_s=duration("backoffDelay") or 0.0,
                    timeout_s=duration("timeout"), retry_after_max_s=duration("retryAfterMax"),
                    dead_letter_sink=resolve(spec.get("deadLetterSink"), services,
                                             f"{where} deadLetterSink"))


def load_triggers(services: Mapping[str, str], eventing_dir: str | Path = EVENTING_DIR,
                  ) -> list[Trigger]:
    """Every Trigger of ``eventing_dir/*.yaml`` whose subscriber is one of ``services``
    (name -> base URL); the others are skipped with a warning."""
    triggers = []
    for path in sorted(Path(eventing_dir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Trigger":
                continue
            spec = doc.get("spec") or {}
            name = (doc.get("metadata") or {}).get("name", path.stem)
            where = f"{path.name}: Trigger {name}"
            url = resolve(spec.get("subscriber"), services, f"{where} subscriber")
            if url is None:
                log.warning("%s skipped: its subscriber is not running here", where)
                continue
            attributes = (spec.get("filter") or {}).get("attributes")
            triggers.append(Trigger(name=name, subscriber=url, filters=spec.get("filters") or [],
                                    attributes=dict(attributes) if attributes else None,
                                    delivery=parse_delivery(spec.get("delivery"), services,
                                                            where)))
    return triggers


# -- the reply log of `make run` ---------------------------------------------------------------
REPLY_FILTERS = [{"prefix": {"type": "dev.llmfn."}}, {"suffix": {"type": ".v1"}},
                 {"not": {"prefix": {"type": "dev.llmfn.inference."}}},
                 {"not": {"suffix": {"type": ".requested.v1"}}}]


class JsonlRecorder:
    """A subscriber (callable) that appends each event as one JSON line to ``path``."""
    __name__ = "jsonl"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps({"recorded_at": _now(), "attributes": dict(event.attrs),
                           "data": event.data_for_humans()}, ensure_ascii=False)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def replies_trigger(path: str | Path) -> Trigger:
    """Reply events (``dev.llmfn.*.v1`` but not inference or request events) into ``path``."""
    return Trigger(name="local-replies", subscriber=JsonlRecorder(path), filters=REPLY_FILTERS)


# -- the broker --------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _retry_after_s(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return 0.0


@dataclass
class Attempt:
    """The outcome of one delivery attempt."""
    status: int  # 500 for a network error or timeout, as the dispatcher reports it
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.error is None

    @property
    def retryable(self) -> bool:
        return self.error is not None or self.status >= 500 or self.status in RETRYABLE


class _Queue:
    """One Trigger's bounded queue and its workers."""

    def __init__(self, trigger: Trigger, capacity: int):
        self.trigger, self.capacity = trigger, capacity
        self.items: deque[Event] = deque()
        self.cond = threading.Condition()
        self.in_flight = 0
        self.threads: list[threading.Thread] = []

    def idle(self) -> bool:
        return not self.items and not self.in_flight


class Broker:
    """The broker: ingress on ``host:port``, one bounded queue (``queue_size``) and ``workers``
    threads per Trigger. ``start()``, then ``stop()``; also a context manager."""

    def __init__(self, triggers: Iterable[Trigger], *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, queue_size: int = 100, workers: int = 4,
                 default_ttl: int = DEFAULT_TTL, reply_wait_s: float = REPLY_WAIT_S):
        self.queues = [_Queue(t, queue_size) for t in triggers]
        names = [q.trigger.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate trigger names: {names}")
        self.host, self.port, self.workers = host, port, workers
        self.default_ttl, self.reply_wait_s = default_ttl, reply_wait_s
        self._ingress = threading.Lock()
        self._closed = True  # the HTTP ingress takes events between start() and stop()
        self._halt = threading.Event()  # workers stop taking events and retrying
        self._lost = 0  # events given up because of the halt
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._local = threading.local()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server_thread is not None and self._server_thread.is_alive()

    def start(self) -> Broker:
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        for q in self.queues:
            for i in range(self.workers):
                t = threading.Thread(target=self._work, args=(q,), daemon=True,
                                     name=f"broker-{q.trigger.name}-{i}")
                t.start()
                q.threads.append(t)
        self._closed = False
        self._server_thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                               daemon=True, name="broker-ingress")
        self._server_thread.start()
        log.info("broker on %s with %d trigger(s): %s", self.url, len(self.queues),
                 "; ".join(f"{q.trigger.name} -> {q.trigger.target}" for q in self.queues))
        return self

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, grace_s: float = 30.0) -> int:
        """Close the ingress, deliver what is queued (replies included) within ``grace_s``,
        stop the workers. Returns the number of events left undelivered (logged as lost)."""
        self._closed = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.wait_idle(grace_s)
        self._halt.set()
        for q in self.queues:
            with q.cond:
                q.cond.notify_all()
        end = time.monotonic() + 2.0  # a worker stuck in a request is a daemon: left behind
        for q in self.queues:
            for t in q.threads:
                t.join(timeout=max(0.0, end - time.monotonic()))
        lost = self._lost + sum(len(q.items) + q.in_flight for q in self.queues)
        if lost:
            log.error("broker stopped with %d event(s) undelivered (lost)", lost)
        else:
            log.info("broker stopped; every accepted event was delivered")
        return lost

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once every queue is empty with nothing in flight, all at once (a reply
        delivered by one queue fills another), within ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while not all(q.idle() for q in self.queues):
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)
        return True

    def matching(self, event_type: str) -> list[str]:
        """The Triggers an event of ``event_type`` (and no other attribute) would go to."""
        probe = Event({"specversion": "1.0", "id": "probe", "source": "/probe",
                       "type": event_type})
        return [q.trigger.name for q in self.queues if q.trigger.matches(probe)]

    def stats(self) -> dict:
        return {q.trigger.name: {"subscriber": q.trigger.target, "queued": len(q.items),
                                 "in_flight": q.in_flight, "capacity": q.capacity}
                for q in self.queues}

    # -- ingress ----------------------------------------------------------------------------
    def publish(self, event: Event, wait_s: float = 0.0) -> tuple[int, str]:
        """Queue ``event`` for every matching Trigger, all or none: (202, ""), (400, why) for
        an expired TTL, or (503, why) when a matching queue stayed full for ``wait_s``."""
        try:
            ttl = int(event.get(TTL_ATTR) or self.default_ttl)
        except ValueError:
            ttl = self.default_ttl
        if ttl <= 0:
            log.info("dropped %s (id %s): %s is 0", event.get("type"), event.get("id"), TTL_ATTR)
            return 400, f"{TTL_ATTR} is {ttl}: dropped"
        event = event.replace(**{TTL_ATTR: ttl, ARRIVAL_ATTR: _now()})
        matching = [q for q in self.queues if q.trigger.matches(event)]
        if not matching:
            log.debug("no trigger for %s (id %s): dropped", event.get("type"), event.get("id"))
            return 202, ""
        end = time.monotonic() + wait_s
        for _ in range(1 + int(wait_s / 0.02)):
            with self._ingress:  # the only place that adds: room seen here stays there
                full = [q.trigger.name for q in matching if len(q.items) >= q.capacity]
                if not full:
                    for q in matching:
                        with q.cond:
                            q.items.append(event)
                            q.cond.notify()
                    return 202, ""
            if time.monotonic() >= end:
                break
            time.sleep(0.02)
        log.warning("503 for %s (id %s): queue full for %s", event.get("type"), event.get("id"),
                    ", ".join(full))
        return 503, f"queue full for trigger(s) {', '.join(full)}"

    def _handler(self):
        broker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    return self._answer(411, {"error": "Content-Length required"}, close=True)
                if int(length) > MAX_BODY:
                    return self._answer(413, {"error": f"body over {MAX_BODY} bytes"},
                                        close=True)
                body = self.rfile.read(int(length))
                if urlsplit(self.path).path != "/":
                    return self._answer(404, {"error": "POST events to /"})
                if broker._closed:
                    return self._answer(503, {"error": "broker is stopping"}, retry_after=1)
                try:
                    event = Event.from_http(dict(self.headers.items()), body)
                except BadEvent as err:
                    return self._answer(400, {"error": str(err)})
                status, why = broker.publish(event)
                if status == 202:
                    return self._answer(202, None)
                return self._answer(status, {"error": why},
                                    retry_after=1 if status == 503 else None)

            def do_GET(self):
                if urlsplit(self.path).path in ("/", "/health"):
                    return self._answer(200, {"broker": broker.url, "triggers": broker.stats()})
                return self._answer(404, {"error": "not found"})

            def _answer(self, status, doc, retry_after=None, close=False):
                body = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", "application/json")
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                log.debug("ingress: " + fmt, *args)

        return Handler

    # -- delivery ---------------------------------------------------------------------------
    def _work(self, q: _Queue) -> None:
        while True:
            with q.cond:
                while not q.items and not self._halt.is_set():
                    q.cond.wait(0.5)
                if self._halt.is_set():
                    return
                event = q.items.popleft()
                q.in_flight += 1
            try:
                self._deliver(q.trigger, event)
            except Exception:  # a bug must not kill the worker
                log.exception("trigger %s: delivery of id %s failed", q.trigger.name,
                              event.get("id"))
            finally:
                with q.cond:
                    q.in_flight -= 1
                    q.cond.notify_all()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # loopback: no proxy from the environment
        return session

    def _post(self, target, event: Event, timeout_s: float | None,
              extra: Mapping[str, str]) -> Attempt:
        if not isinstance(target, str):
            try:
                target(event)
                return Attempt(200)
            except Exception as err:  # noqa: BLE001 - a failed delivery, as a 500 would be
                return Attempt(500, f"{type(err).__name__}: {err}".encode())
        headers, body = event.to_http()
        timeout = timeout_s or DEFAULT_TIMEOUT_S
        try:
            resp = self._session().post(target, data=body, headers={**headers, **extra},
                                        timeout=(min(timeout, 10.0), timeout),
                                        allow_redirects=False)
        except requests.RequestException as err:
            return Attempt(500, f"dispatch error: {err}".encode(), error=type(err).__name__)
        return Attempt(resp.status_code, resp.content, dict(resp.headers))

    def _send(self, trigger: Trigger, target, event: Event, extra: Mapping[str, str]
              ) -> tuple[Attempt, int]:
        """POST with the Trigger's retries; (last attempt, attempts made)."""
        d = trigger.delivery
        for i in range(d.retry + 1):
            attempt = self._post(target, event, d.timeout_s, extra)
            if attempt.ok or not attempt.retryable or i == d.retry:
                return attempt, i + 1
            wait = d.backoff_s(i)
            if attempt.status in (429, 503) and d.retry_after_max_s:
                wait = max(wait, min(_retry_after_s(attempt.headers.get("Retry-After")),
                                     d.retry_after_max_s))
            log.info("trigger %s: %s (id %s) -> %s, retry %d/%d in %.2fs", trigger.name,
                     event.get("type"), event.get("id"), attempt.error or attempt.status,
                     i + 1, d.retry, wait)
            if self._halt.wait(wait):
                return attempt, i + 1
        raise AssertionError("unreachable")

    def _deliver(self, trigger: Trigger, event: Event) -> None:
        ttl = int(event.get(TTL_ATTR) or self.default_ttl)
        sent = event.replace(drop=[TTL_ATTR])  # the TTL is the broker's, not the subscriber's
        attempt, n = self._send(trigger, trigger.subscriber, sent, {"Prefer": "reply"})
        dest = trigger.target
        if not attempt.ok and self._halt.is_set():
            return self._give_up(trigger, event)
        if attempt.ok:
            log.info("trigger %s: %s (id %s) -> %s after %d attempt(s)", trigger.name,
                     event.get("type"), event.get("id"), attempt.status, n)
            if not Event.is_event(attempt.headers):
                return  # no reply (an empty or non-event body): delivered
            try:
                reply = Event.from_http(attempt.headers, attempt.body)
            except BadEvent as err:
                attempt = Attempt(502, f"invalid reply event: {err}".encode())
            else:
                status, why = self.publish(reply.replace(**{TTL_ATTR: ttl - 1}),
                                           wait_s=self.reply_wait_s)
                log.info("trigger %s: reply %s (id %s) -> ingress %s %s", trigger.name,
                         reply.get("type"), reply.get("id"), status, why)
                if status != 503:
                    return  # queued, or dropped for its TTL (not a failure)
                attempt, dest = Attempt(503, why.encode()), self.url
        self._dead_letter(trigger, sent, attempt, n, dest)

    def _give_up(self, trigger: Trigger, event: Event) -> None:
        with self._ingress:
            self._lost += 1
        log.error("trigger %s: %s (id %s) given up: the broker stopped", trigger.name,
                  event.get("type"), event.get("id"))

    def _dead_letter(self, trigger: Trigger, event: Event, attempt: Attempt, n: int,
                     dest: str) -> None:
        sink = trigger.delivery.dead_letter_sink
        what = (f"trigger {trigger.name}: {event.get('type')} (id {event.get('id')}) failed "
                f"after {n} attempt(s), last {attempt.error or attempt.status}")
        if not sink:
            log.error("%s; no deadLetterSink: dropped", what)
            return
        data = base64.b64encode(attempt.body).decode()[:ERROR_DATA_MAX]
        dead = event.replace(knativeerrordest=dest, knativeerrorcode=attempt.status,
                             knativeerrordata=data)
        result, m = self._send(trigger, sink, dead, {})
        if not result.ok and self._halt.is_set():
            return self._give_up(trigger, event)
        if result.ok:
            log.warning("%s: dead-lettered to %s", what, sink)
        else:
            log.error("%s; dead-letter sink %s failed too (%s after %d attempt(s)): dropped",
                      what, sink, result.error or result.status, m)


# -- standalone --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--eventing-dir", default=str(EVENTING_DIR))
    parser.add_argument("--service", action="append", default=[], metavar="NAME=URL",
                        help="where a subscriber ref's Service runs (repeatable)")
    parser.add_argument("--replies", metavar="FILE", help="append reply events to FILE (JSONL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    services = dict(s.split("=", 1) for s in args.service)
    triggers = load_triggers(services, args.eventing_dir)
    if args.replies:
        triggers.append(replies_trigger(args.replies))
    broker = Broker(triggers, host=args.host, port=args.port).start()
    try:
        while broker.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return 1 if broker.stop() else 0


if __name__ == "__main__":
    raise SystemExit(main())
