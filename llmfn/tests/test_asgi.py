"""WSGIBridge: streaming, concurrency, disconnect, limits, errors, environ (PEP 3333, ASGI 3).

Driven directly with ASGI receive/send coroutines, and once through a real Hypercorn server.
Steps are sequenced with threading.Events; every wait has a deadline; no wall-clock assertions.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
import types

import flask
import httpx
import pytest

from llmfn.asgi import DISCONNECTED_KEY, WSGIBridge
from scripts.hypercorn_thread import hypercorn_server

DEADLINE_S = 10.0


def scope_for(path="/", *, method="GET", query=b"", headers=(), root_path="", **extra):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": root_path, "headers": list(headers), "server": ("127.0.0.1", 8080),
             "client": ("127.0.0.1", 40000)}
    scope.update(extra)
    return scope


class Conn:
    """One ASGI connection: the test feeds ``inbox`` and reads what the app sent from ``sent``."""

    def __init__(self, *messages, end_body=True):
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: asyncio.Queue = asyncio.Queue()
        self.receive_calls = 0
        for m in messages:
            self.inbox.put_nowait(m)
        if end_body and not messages:
            self.inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive(self):
        self.receive_calls += 1
        return await self.inbox.get()

    async def send(self, message):
        await self.sent.put(message)

    async def next(self):
        return await asyncio.wait_for(self.sent.get(), DEADLINE_S)

    def disconnect(self):
        self.inbox.put_nowait({"type": "http.disconnect"})


async def collect(conn: Conn):
    """Read messages until the last body message; return (status, headers dict, body)."""
    start = await conn.next()
    assert start["type"] == "http.response.start"
    body = b""
    for _ in range(10_000):
        msg = await conn.next()
        body += msg.get("body", b"")
        if not msg.get("more_body", False):
            return start["status"], dict(start["headers"]), body
    raise AssertionError("response did not end")


async def wait_event(ev: threading.Event) -> bool:
    return await asyncio.to_thread(ev.wait, DEADLINE_S)


def wait_sync(ev: threading.Event) -> bool:
    return ev.wait(DEADLINE_S)


class StreamApp:
    """A Flask app whose /stream yields chunk i only after gate[i] is set; /ping answers at once."""

    def __init__(self, n=5):
        self.n = n
        self.gates = [threading.Event() for _ in range(n)]
        self.produced = 0
        self.closed = threading.Event()      # GeneratorExit seen
        self.finished = threading.Event()    # ran to the end
        self.environ: dict | None = None
        self.app = flask.Flask(__name__)
        self.app.add_url_rule("/stream", view_func=self.stream)
        self.app.add_url_rule("/ping", view_func=lambda: "pong")

    def stream(self):
        self.environ = flask.request.environ

        def gen():
            try:
                for i in range(self.n):
                    if not self.gates[i].wait(DEADLINE_S):
                        raise RuntimeError(f"gate {i} not opened")
                    self.produced += 1
                    yield f"chunk{i}\n"
                self.finished.set()
            except GeneratorExit:
                self.closed.set()
                raise
        return flask.Response(gen(), mimetype="text/plain")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * DEADLINE_S))


@pytest.fixture
def sapp():
    s = StreamApp()
    yield s
    for g in s.gates:  # never leave a worker blocked
        g.set()


@pytest.fixture
def bridge(sapp):
    b = WSGIBridge(sapp.app, max_workers=4)
    yield b
    b.shutdown(wait=True)


def test_streams_chunk_by_chunk_before_generator_finishes(sapp, bridge):
    async def main():
        conn = Conn()
        task = asyncio.create_task(bridge(scope_for("/stream"), conn.receive, conn.send))
        sapp.gates[0].set()
        start = await conn.next()
        assert start["status"] == 200
        for i in range(sapp.n):
            sapp.gates[i].set()
            msg = await conn.next()
            assert msg["body"] == f"chunk{i}\n".encode()
            assert msg["more_body"] is True
            if i < sapp.n - 1:
                assert not sapp.finished.is_set()  # chunk i arrived while the generator runs
        end = await conn.next()
        assert end == {"type": "http.response.body", "body": b"", "more_body": False}
        await asyncio.wait_for(task, DEADLINE_S)
        assert sapp.finished.is_set()
    run(main())


def test_concurrent_request_completes_while_stream_is_blocked(sapp, bridge):
    async def main():
        conn = Conn()
        task = asyncio.create_task(bridge(scope_for("/stream"), conn.receive, conn.send))
        sapp.gates[0].set()
        await conn.next()  # start
        assert (await conn.next())["body"] == b"chunk0\n"  # now blocked on gate 1
        ping = Conn()
        await asyncio.wait_for(bridge(scope_for("/ping"), ping.receive, ping.send), DEADLINE_S)
        assert (await collect(ping))[::2] == (200, b"pong")
        assert not sapp.gates[1].is_set() and sapp.produced == 1
        for g in sapp.gates:
            g.set()
        await asyncio.wait_for(task, DEADLINE_S)
    run(main())


def test_disconnect_sets_event_and_closes_generator_within_one_chunk(sapp, bridge):
    async def main():
        conn = Conn()
        task = asyncio.create_task(bridge(scope_for("/stream"), conn.receive, conn.send))
        sapp.gates[0].set()
        await conn.next()
        assert (await conn.next())["body"] == b"chunk0\n"
        conn.disconnect()
        assert await wait_event(sapp.environ[DISCONNECTED_KEY])
        produced_at_disconnect = sapp.produced
        for g in sapp.gates:  # let the generator run on: it must be stopped at the next chunk
            g.set()
        assert await wait_event(sapp.closed)
        await asyncio.wait_for(task, DEADLINE_S)
        assert not sapp.finished.is_set()
        assert sapp.produced - produced_at_disconnect <= 1
        assert conn.sent.empty()  # nothing sent after the disconnect
    run(main())


def test_failing_send_counts_as_disconnect(sapp, bridge):
    async def main():
        conn = Conn()
        sends = 0

        async def send(message):
            nonlocal sends
            sends += 1
            if sends > 2:
                raise OSError("connection reset")
        sapp.gates[0].set()
        sapp.gates[1].set()
        task = asyncio.create_task(bridge(scope_for("/stream"), conn.receive, send))
        assert await wait_event(sapp.closed)
        await asyncio.wait_for(task, DEADLINE_S)
        assert sapp.environ[DISCONNECTED_KEY].is_set()
        assert sapp.produced == 2 and not sapp.finished.is_set()
    run(main())


def test_oversized_body_gets_413_without_reading():
    seen = []
    bridge = WSGIBridge(lambda e, s: seen.append(e) or [], max_body_bytes=10)
    try:
        async def main():
            declared = Conn()
            hdrs = [(b"content-length", b"100")]
            await asyncio.wait_for(
                bridge(scope_for("/", method="POST", headers=hdrs), declared.receive,
                       declared.send), DEADLINE_S)
            status, headers, body = await collect(declared)
            assert declared.receive_calls == 0
            chunked = Conn({"type": "http.request", "body": b"x" * 8, "more_body": True},
                           {"type": "http.request", "body": b"x" * 8, "more_body": True},
                           {"type": "http.request", "body": b"x" * 8, "more_body": False})
            await asyncio.wait_for(
                bridge(scope_for("/", method="POST"), chunked.receive, chunked.send), DEADLINE_S)
            assert (await collect(chunked))[0] == 413
            assert chunked.receive_calls == 2 and not seen
            return status, headers, body
        status, headers, body = run(main())
        assert status == 413
        assert headers[b"content-type"] == b"application/json"
        assert json.loads(body) == {"error": {"message": "Request body is too large.",
                                              "type": "invalid_request_error", "param": None,
                                              "code": "request_too_large"}}
    finally:
        bridge.shutdown(wait=True)


def test_body_within_limit_reaches_wsgi_input():
    def echo(environ, start_response):
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ.get("CONTENT_LENGTH", "-").encode(), b"|", data]
    bridge = WSGIBridge(echo, max_body_bytes=10)
    try:
        async def main():
            conn = Conn({"type": "http.request", "body": b"hello", "more_body": True},
                        {"type": "http.request", "body": b"12345", "more_body": False})
            await asyncio.wait_for(
                bridge(scope_for("/", method="POST"), conn.receive, conn.send), DEADLINE_S)
            return await collect(conn)
        assert run(main())[::2] == (200, b"10|hello12345")
    finally:
        bridge.shutdown(wait=True)


def _drive(app, scope=None):
    bridge = WSGIBridge(app)
    try:
        async def main():
            conn = Conn()
            await asyncio.wait_for(bridge(scope or scope_for("/"), conn.receive, conn.send),
                                   DEADLINE_S)
            msgs = []
            while not conn.sent.empty():
                msgs.append(conn.sent.get_nowait())
            return msgs
        return run(main())
    finally:
        bridge.shutdown(wait=True)


def test_app_exception_before_headers_is_500(caplog):
    def boom(environ, start_response):
        raise ValueError("secret detail")
    msgs = _drive(boom)
    assert msgs[0]["status"] == 500
    body = json.loads(msgs[1]["body"])
    assert body["error"]["type"] == "server_error" and "secret" not in msgs[1]["body"].decode()
    assert "WSGI app failed" in caplog.text


def test_generator_exception_before_first_chunk_is_500_and_after_is_truncated():
    closed = []

    def late(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            try:
                if environ["PATH_INFO"] == "/early":
                    raise ValueError("early")
                yield b"part"
                raise ValueError("late")
            finally:
                closed.append(environ["PATH_INFO"])
        return gen()
    assert _drive(late, scope_for("/early"))[0]["status"] == 500
    msgs = _drive(late, scope_for("/late"))
    assert msgs[0]["status"] == 200
    assert msgs[1] == {"type": "http.response.body", "body": b"part", "more_body": True}
    assert len(msgs) == 2  # no final message: the server ends the connection
    assert closed == ["/early", "/late"]


def test_start_response_with_exc_info():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("x")
        except KeyError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"later"]
    msgs = _drive(app)
    assert msgs[0]["status"] == 503 and msgs[1]["body"] == b"later"

    def twice(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b""]
    assert _drive(twice)[0]["status"] == 500

    def after_headers(environ, start_response):
        write = start_response("200 OK", [])
        write(b"sent")
        try:
            raise KeyError("x")
        except KeyError:
            start_response("500 Oops", [], sys.exc_info())  # re-raises: headers are out
        return [b"never"]
    msgs = _drive(after_headers)
    assert [m.get("body") for m in msgs] == [None, b"sent"]


def test_content_length_truncates_and_ends_response():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "5")])
        return [b"abc", b"defgh", b"ignored"]
    msgs = _drive(app)
    assert msgs[0]["headers"] == [(b"content-length", b"5")]
    assert [(m["body"], m["more_body"]) for m in msgs[1:]] == [(b"abc", True), (b"de", False)]


def test_environ_follows_pep3333():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []
    headers = [(b"host", b"example.test"), (b"x-multi", b"a"), (b"x-multi", b"b"),
               (b"content-type", b"application/json"), (b"content-length", b"0"),
               (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x_sneaky", b"1")]
    scope = scope_for("/api/v1/models", query=b"a=1&b=%20x", headers=headers, root_path="/api",
                      scheme="https", client=("10.0.0.7", 5555), server=("10.0.0.1", 8443))
    msgs = _drive(app, scope)
    assert msgs[0]["status"] == 204
    assert seen["REQUEST_METHOD"] == "GET"
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/api", "/v1/models")
    assert seen["QUERY_STRING"] == "a=1&b=%20x"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("10.0.0.1", "8443")
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("10.0.0.7", "5555")
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1" and seen["wsgi.url_scheme"] == "https"
    assert seen["CONTENT_TYPE"] == "application/json" and seen["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in seen and "HTTP_CONTENT_LENGTH" not in seen
    assert seen["HTTP_X_MULTI"] == "a,b" and seen["HTTP_COOKIE"] == "a=1; b=2"
    assert seen["HTTP_HOST"] == "example.test" and "HTTP_X_SNEAKY" not in seen
    assert seen["wsgi.version"] == (1, 0) and seen["wsgi.multithread"] is True
    assert isinstance(seen[DISCONNECTED_KEY], threading.Event)

    _drive(app, scope_for("/", server=None, headers=[(b"host", b"h.test:1234")]))
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("h.test", "80")
    assert seen["SCRIPT_NAME"] == "" and seen["PATH_INFO"] == "/"


def test_shutdown_refuses_new_requests_with_503():
    bridge = WSGIBridge(lambda e, s: [])
    bridge.shutdown(wait=True)

    async def main():
        conn = Conn()
        await asyncio.wait_for(bridge(scope_for("/"), conn.receive, conn.send), DEADLINE_S)
        return await collect(conn)
    status, headers, body = run(main())
    assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down"
    assert headers[b"retry-after"] == b"2"


def test_shutdown_stops_running_stream_and_answers_queued_request_503(sapp):
    bridge = WSGIBridge(sapp.app, max_workers=1)

    async def main():
        conn = Conn()
        task = asyncio.create_task(bridge(scope_for("/stream"), conn.receive, conn.send))
        sapp.gates[0].set()
        await conn.next()
        assert (await conn.next())["body"] == b"chunk0\n"  # the only worker is busy
        queued = Conn()
        queued_task = asyncio.create_task(bridge(scope_for("/ping"), queued.receive, queued.send))
        for _ in range(1000):  # body read (1st receive), queued, disconnect watcher (2nd)
            if queued.receive_calls >= 2:
                break
            await asyncio.sleep(0)
        assert queued.receive_calls >= 2
        bridge.shutdown(wait=False)
        assert sapp.environ[DISCONNECTED_KEY].is_set()
        for g in sapp.gates:
            g.set()
        await asyncio.wait_for(queued_task, DEADLINE_S)
        status, _, body = await collect(queued)
        await asyncio.wait_for(task, DEADLINE_S)
        return status, json.loads(body)
    try:
        status, body = run(main())
        assert status == 503 and body["error"]["type"] == "service_unavailable"
        assert sapp.closed.wait(DEADLINE_S) and not sapp.finished.is_set()
    finally:
        bridge.shutdown(wait=True)


# --- through a real Hypercorn server --------------------------------------------------------

def test_through_hypercorn_stream_concurrency_and_disconnect(sapp, bridge):
    """Served the way func-python serves a function: its ASGIApplication calls ``handle``."""
    from func_python.http import ASGIApplication

    with hypercorn_server(ASGIApplication(types.SimpleNamespace(handle=bridge)),
                          deadline_s=DEADLINE_S) as url:
        with httpx.Client(timeout=DEADLINE_S) as client:
            sapp.gates[0].set()
            with client.stream("GET", url + "/stream") as resp:
                chunks = resp.iter_raw()
                assert next(chunks) == b"chunk0\n"
                assert not sapp.finished.is_set() and sapp.produced == 1
                with httpx.Client(timeout=DEADLINE_S) as other:  # while the stream is blocked
                    assert other.get(url + "/ping").text == "pong"
                sapp.gates[1].set()
                assert next(chunks) == b"chunk1\n"
            # leaving the block closed the connection mid-stream
        assert sapp.environ is not None and wait_sync(sapp.environ[DISCONNECTED_KEY])
        produced_at_disconnect = sapp.produced
        for g in sapp.gates:
            g.set()
        assert sapp.closed.wait(DEADLINE_S)
        assert not sapp.finished.is_set()
        assert sapp.produced - produced_at_disconnect <= 1
