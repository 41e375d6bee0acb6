"""Turn a CloudEvent into a stored document: known types, validation, identity, dead letters.

Framework-free: takes a decoded ``cloudevents.core`` event (``llmfn.ce_http.decode_http``) and
returns the answer's body, or raises an ``APIError`` the app maps to HTTP once. Status codes
follow the Knative Eventing data-plane contract: 2xx recorded (or already recorded), 400
invalid (not retried), 413 too large, 503 database unavailable (retried after `Retry-After`).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import bson
from bson.errors import InvalidDocument

from llmfn.ce_http import InvalidEvent
from llmfn.errors import APIError
from llmfn.events import INFERENCE_COMPLETED, validate_inference_data
from llmfn.protocol import to_builtins

from .commit import DUPLICATE, RECORDED, Committer
from .protocol import DeadLettered, Recorded
from .store import BATCH_FIELD, AuditStore, DocumentRejected, StoreUnavailable, event_key

log = logging.getLogger(__name__)

# Known event types -> data validator (problems as strings; empty = valid).
KNOWN_TYPES: dict[str, Callable[[Any], list[str]]] = {
    INFERENCE_COMPLETED: validate_inference_data,
}
JSON_TYPES = ("application/json", "text/json")
# Extensions Knative adds to a dead-lettered event (eventing "Dead Letter Sink" docs).
KNATIVE_ERROR_EXTENSIONS = ("knativeerrorcode", "knativeerrordest", "knativeerrordata")
# Top-level fields of a stored event that data fields cannot overwrite.
RESERVED = ("_id", "ce", "time", "error", "received_at", "expire_at", BATCH_FIELD)
_MAX_DEPTH = 32


class DatabaseUnavailable(APIError):
    """The event store cannot be reached: 503 with Retry-After, so the Broker retries."""
    status = 503
    type = "service_unavailable"
    code = "database_unavailable"

    def __init__(self, retry_after_s: int):
        super().__init__("The event store is unavailable; retry.", retry_after_s=retry_after_s)


def _media_type(value: str | None) -> str:
    return (value or "application/json").split(";", 1)[0].strip().lower()


def _key_problems(value: Any, depth: int = 0) -> list[str]:
    """Keys MongoDB cannot store: `$`-prefixed, with `.` or NUL; nesting too deep."""
    if depth > _MAX_DEPTH:
        return ["data is nested too deeply"]
    if isinstance(value, dict):
        for k, v in value.items():
            if k.startswith("$") or "." in k or "\x00" in k:
                return [f"data key {k!r} cannot be stored (starts with $ or has . or NUL)"]
            found = _key_problems(v, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _key_problems(v, depth + 1)
            if found:
                return found
    return []


def _attributes_doc(event) -> dict:
    """CloudEvent attributes (including extensions) as a BSON-safe sub-document."""
    return {k: v for k, v in event.get_attributes().items() if v is not None}


def validate(event, validators: Mapping[str, Callable[[Any], list[str]]] = KNOWN_TYPES) -> dict:
    """The event's data if the event is a known, valid type; else raise InvalidEvent."""
    etype = event.get_type()
    validator = validators.get(etype)
    if validator is None:
        raise InvalidEvent([f"unknown event type {etype!r}; known: {sorted(validators)}"])
    media = _media_type(event.get_datacontenttype())
    if media not in JSON_TYPES:
        raise InvalidEvent([f"datacontenttype must be application/json, got {media!r}"])
    data = event.get_data()
    problems = list(validator(data)) or _key_problems(data)
    if problems:
        raise InvalidEvent(problems)
    return data


def event_document(event, data: dict, received_at: dt.datetime) -> dict:
    """The stored form: data fields at top level, `time` as a date, attributes under `ce`."""
    doc = {k: v for k, v in data.items() if k not in RESERVED}
    doc.update(_id=event_key(event.get_source(), event.get_id()), ce=_attributes_doc(event),
               time=dt.datetime.fromisoformat(data["time"]).astimezone(dt.UTC),
               error=int(data.get("status", 0) >= 400), received_at=received_at)
    return doc


def dead_letter_document(event, received_at: dt.datetime,
                         validators: Mapping[str, Callable[[Any], list[str]]] = KNOWN_TYPES
                         ) -> dict:
    """Everything about a dead-lettered event, valid or not, flagged `dead_letter: true`."""
    attrs = _attributes_doc(event)
    try:
        validate(event, validators)
        problems: list[str] = []
    except InvalidEvent as err:
        problems = err.problems
    doc = {"_id": event_key(event.get_source(), event.get_id()), "dead_letter": True,
           "ce": attrs, "valid": not problems, "problems": problems, "received_at": received_at}
    for name in KNATIVE_ERROR_EXTENSIONS:
        doc[name] = attrs.get(name)
    raw = attrs.get("knativeerrordata")
    if isinstance(raw, str):  # base64 of the failing response body (truncated by Knative)
        try:
            doc["knativeerrordata_text"] = base64.b64decode(raw, validate=True).decode(
                "utf-8", "replace")
        except ValueError:
            pass
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        doc["data_base64"] = base64.b64encode(bytes(data)).decode("ascii")
    elif isinstance(data, (dict, list)) and _key_problems(data):
        doc["data_json"] = json.dumps(data)  # keys MongoDB refuses: keep the text
    else:
        doc["data"] = data
    return doc


class Ingestor:
    """Records events exactly once per (source, id) and keeps dead letters."""

    def __init__(self, store: AuditStore, metrics, committer: Committer, *,
                 validators: Mapping[str, Callable[[Any], list[str]]] = KNOWN_TYPES,
                 retry_after_s: int = 2, wait_s: float = 30.0,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)):
        self.store = store
        self.metrics = metrics
        self.committer = committer
        self.validators = validators
        self.retry_after_s = retry_after_s
        self.wait_s = wait_s
        self.clock = clock

    def _label(self, event) -> str:
        etype = event.get_type()
        return etype if etype in self.validators else "other"

    def invalid(self, err: InvalidEvent, *, event=None, reason: str = "data") -> InvalidEvent:
        """Count and log (with the event identity) an invalid event; returns it to raise."""
        self.metrics.invalid.labels(reason).inc()
        ident = (f"id={event.get_id()!r} source={event.get_source()!r} "
                 f"type={event.get_type()!r}" if event is not None else "undecodable")
        log.warning("invalid event %s: %s", ident, err.message)
        return err

    def unavailable(self, op: str, err: Exception) -> DatabaseUnavailable:
        """Count and log a database failure; returns the 503 to raise."""
        self.metrics.db_errors.labels(op).inc()
        log.warning("database unavailable during %s: %s", op, err)
        return DatabaseUnavailable(self.retry_after_s)

    def record(self, event) -> dict:
        """Validate and store one inference event; the answer's body (protocol.Recorded), or
        raise APIError."""
        self.metrics.received.labels(self._label(event)).inc()
        try:
            data = validate(event, self.validators)
            doc = self.store.with_expiry(event_document(event, data, self.clock()))
            bson.encode(doc)  # an integer beyond int64 would fail the whole batch later
        except InvalidEvent as err:
            raise self.invalid(err, event=event) from None
        except (InvalidDocument, OverflowError, UnicodeEncodeError) as err:
            raise self.invalid(InvalidEvent([f"data cannot be stored: {type(err).__name__}"]),
                               event=event) from None
        try:
            result = self.committer.submit(doc).result(timeout=self.wait_s)
        except TimeoutError:
            result = None
        if result == RECORDED:
            self.metrics.recorded.inc()
            return to_builtins(Recorded(status="recorded", id=event.get_id()))
        if result == DUPLICATE:
            self.metrics.duplicates.inc()
            return to_builtins(Recorded(status="duplicate", id=event.get_id()))
        raise self.unavailable("commit", StoreUnavailable(result or "commit timed out"))

    def dead_letter(self, event) -> dict:
        """Store any CloudEvent a Knative delivery gave up on; never rejects its content. The
        answer's body is protocol.DeadLettered."""
        doc = dead_letter_document(event, self.clock(), self.validators)
        try:
            try:
                new = self.store.insert_dead_letter(doc)
            except DocumentRejected:
                doc.pop("data", None)
                doc["data_json"] = json.dumps(event.get_data(), default=str)
                new = self.store.insert_dead_letter(doc)
        except DocumentRejected as err:
            raise self.invalid(InvalidEvent([f"dead letter cannot be stored: {err}"]),
                               event=event, reason="dead_letter") from None
        except StoreUnavailable as err:
            raise self.unavailable("dead_letter", err) from None
        self.metrics.dead_letters.labels("stored" if new else "duplicate").inc()
        log.warning("dead letter id=%r source=%r type=%r code=%r dest=%r", event.get_id(),
                    event.get_source(), event.get_type(), doc.get("knativeerrorcode"),
                    doc.get("knativeerrordest"))
        return to_builtins(DeadLettered(status="dead_letter" if new else "duplicate",
                                        id=event.get_id()))
