"""CloudEvents received over HTTP: decode a request into an event, or a 400 that says why.

Binary mode (``ce-*`` headers, data as the body) and structured mode
(``application/cloudevents+json``) are decoded with the cloudevents SDK's HTTP bindings. Batch
mode (``application/cloudevents-batch+json``) is refused: Knative never delivers batches.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from .errors import InvalidRequest

BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
NOT_AN_EVENT = ("not a CloudEvent: expected binary mode (ce-* headers) or structured mode "
                "(application/cloudevents+json)")


class InvalidEvent(InvalidRequest):
    """The request is not an acceptable CloudEvent (400, not retried by Knative)."""
    code = "invalid_event"

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems)[:2000])
        self.problems = problems


def binary_id_problems(headers: Mapping[str, str]) -> list[str]:
    """The SDK invents a uuid4 when `id` is missing, which would defeat deduplication:
    a binary-mode request (any `ce-*` header) must carry a non-empty `ce-id` itself."""
    lower = {k.lower(): v for k, v in headers.items()}
    if any(k.startswith("ce-") for k in lower) and not lower.get("ce-id", "").strip():
        return ["ce-id is missing (CloudEvents `id` is required)"]
    return []


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    """True if the request says it carries a CloudEvent (binary, structured or batch mode)."""
    lower = {k.lower(): v for k, v in headers.items()}
    ctype = lower.get("content-type", "").split(";", 1)[0].strip().lower()
    return "ce-specversion" in lower or ctype.startswith("application/cloudevents")


def decode_http(headers: Mapping[str, str], body: bytes):
    """Decode binary or structured mode (CloudEvents HTTP binding) or raise InvalidEvent."""
    lower = {k.lower(): v for k, v in headers.items()}
    ctype = lower.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == BATCH_MEDIA_TYPE:
        raise InvalidEvent(["batch mode is not accepted: send one event per request "
                            "(binary or structured mode)"])
    problems = binary_id_problems(lower)
    if problems:
        raise InvalidEvent(problems)
    if not is_cloudevent(lower):
        raise InvalidEvent([NOT_AN_EVENT])
    if not any(k.startswith("ce-") for k in lower):
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raw = None
        if isinstance(raw, dict) and not raw.get("id"):
            raise InvalidEvent(["id is missing (CloudEvents `id` is required)"])
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event  # not at start
    from cloudevents.core.exceptions import BaseCloudEventException

    try:
        event = from_http_event(HTTPMessage(headers=lower, body=body))
    except BaseCloudEventException as err:
        raise InvalidEvent([f"not a valid CloudEvent: {err}"]) from None
    except (ValueError, TypeError, AttributeError, KeyError, UnicodeDecodeError, RecursionError):
        # Structured mode with a body that is not a JSON object, a bad `time`, ...
        raise InvalidEvent([NOT_AN_EVENT]) from None
    bad = [name for name, value in event.get_attributes().items()
           if isinstance(value, str) and not _is_unicode(value)]
    if bad:
        raise InvalidEvent([f"attribute {name!r} is not valid Unicode (a lone surrogate)"
                            for name in sorted(bad)])
    return event


def _is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON allows "\\ud800"; UTF-8 has no form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
