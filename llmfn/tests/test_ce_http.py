"""CloudEvents over HTTP: both content modes decode, anything else is a 400 that says why."""
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from llmfn.ce_http import InvalidEvent, decode_http, is_cloudevent


def event(**attrs) -> CloudEvent:
    a = {"type": "dev.llmfn.test.v1", "source": "/test", "id": "r1",
         "datacontenttype": "application/json", **attrs}
    return CloudEvent(a, {"model": "m", "n": [1, 2]})


def test_decode_binary_and_structured():
    ev = event(cluster="local", subject="s")
    for msg in (to_binary_event(ev), to_structured_event(ev)):
        assert is_cloudevent(msg.headers)
        got = decode_http(msg.headers, msg.body)
        assert (got.get_id(), got.get_type(), got.get_subject()) == ("r1", ev.get_type(), "s")
        assert got.get_data() == {"model": "m", "n": [1, 2]}
        assert got.get_extension("cluster") == "local"


@pytest.mark.parametrize("headers,body,says", [
    ({"content-type": "text/plain"}, b"hello", "not a CloudEvent"),
    ({"content-type": "application/cloudevents+json"}, b"[1, 2]", "not a CloudEvent"),
    ({"content-type": "application/cloudevents+json"}, b'"str"', "not a CloudEvent"),
    ({"content-type": "application/cloudevents+json"}, b'{"type": "x"}', "id is missing"),
    ({"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s"}, b"{}", "ce-id is missing"),
    ({"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": "1",
      "ce-time": "not-a-time"}, b"{}", "CloudEvent"),
    ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batch mode"),
    ({"content-type": "application/cloudevents+json"}, b"[" * 100000, "not a CloudEvent"),
    ({}, b"", "not a CloudEvent"),
    ({"content-type": "application/cloudevents+json"},
     b'{"specversion": "1.0", "id": "\\ud800", "type": "t", "source": "/s"}', "lone surrogate"),
    ({"content-type": "application/json"}, b'{"id": "1", "source": "/s", "type": "t", '
     b'"specversion": "1.0"}', "not a CloudEvent"),
])
def test_decode_rejects_non_cloudevents_with_a_400(headers, body, says):
    with pytest.raises(InvalidEvent, match=says) as info:
        decode_http(headers, body)
    err = info.value
    assert err.status == 400 and err.body()["error"]["code"] == "invalid_event"


def test_plain_json_is_not_taken_for_an_event():
    assert not is_cloudevent({"content-type": "application/json"})
    assert is_cloudevent({"Content-Type": "application/cloudevents+json; charset=utf-8"})


@pytest.mark.parametrize("headers", [
    {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t", "ce-source": "/s",
     "content-type": "application/json"},
    {"content-type": "application/cloudevents+json"}])
def test_deeply_nested_json_is_an_invalid_event(headers):
    """Past the JSON decoder's recursion limit: a 400 (InvalidEvent), not a RecursionError."""
    body = b'{"data": ' * 50_000 + b"1" + b"}" * 50_000
    with pytest.raises(InvalidEvent):
        decode_http(headers, body)
