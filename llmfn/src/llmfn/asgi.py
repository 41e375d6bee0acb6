"""WSGI -> ASGI bridge: one pool thread per request, chunk-by-chunk streaming, sees http.disconnect.

func-python's Hypercorn server calls ``handle(scope, receive, send)`` (ASGI 3) for every request
but ``/health/*``; our apps are Flask (WSGI, PEP 3333). asgiref's ``WsgiToAsgi`` runs every call on
one shared thread and never reads ``http.disconnect``; this bridge instead

- runs each request on a thread of a bounded ``ThreadPoolExecutor``, so ``/metrics`` answers while
  a long stream is running (beyond ``max_workers`` requests wait in the pool's queue);
- sends each chunk of the WSGI iterable as soon as it is produced (the worker waits until the
  server accepted it: that is the back-pressure);
- keeps reading ``receive()`` after the body: on ``http.disconnect`` (or a failing ``send``) it
  sets ``environ["llmfn.disconnected"]`` (a ``threading.Event``), stops iterating and closes the
  iterable from the worker thread, so a generator sees ``GeneratorExit`` within one chunk.

The request body is read whole before the app runs (spooled to disk above ``SPOOL_BYTES``);
beyond ``max_body_bytes`` the bridge answers 413 without reading further.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

from llmfn.errors import APIError, RequestTooLarge, ShuttingDown, internal_error

log = logging.getLogger(__name__)

SPOOL_BYTES = 1 << 20
"""Request bodies up to this many bytes stay in memory; larger ones spill to a temp file."""

DISCONNECTED_KEY = "llmfn.disconnected"
"""environ key of the ``threading.Event`` set when the client has gone away."""


class _Disconnected(Exception):
    """The client is gone: stop producing the response."""


class _Request:
    """State shared by the event loop and the worker thread for one request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable):
        self.loop = loop
        self._send = send
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future | None = None

    def disconnect(self) -> None:
        """Mark the client gone and wake a worker waiting on a send (any thread)."""
        with self._lock:
            self.disconnected.set()
            if self._pending is not None:
                self._pending.cancel()

    async def _send_on_loop(self, message: dict) -> None:
        await self._send(message)

    def send(self, message: dict) -> None:
        """Send one ASGI message from the worker thread; wait until the server took it."""
        with self._lock:
            if self.disconnected.is_set():
                raise _Disconnected()
            try:
                fut = asyncio.run_coroutine_threadsafe(self._send_on_loop(message), self.loop)
            except RuntimeError as exc:  # the loop is closed
                self.disconnected.set()
                raise _Disconnected() from exc
            self._pending = fut
        try:
            fut.result()
        except (concurrent.futures.CancelledError, Exception) as exc:  # disconnect, or send failed
            log.debug("send failed, treating the client as gone: %r", exc)
            self.disconnect()
            raise _Disconnected() from exc
        finally:
            with self._lock:
                self._pending = None


class _Response:
    """PEP 3333 ``start_response``/``write`` and the body of one response (worker thread)."""

    def __init__(self, req: _Request):
        self.req = req
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.headers_sent = False
        self.sent_bytes = 0
        self.complete = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: avoid a reference cycle
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.content_length = None
        for k, v in headers:
            if k.lower() == "content-length":
                self.content_length = int(v)
        return self.write

    def _start(self) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI app returned before calling start_response")
        self.req.send({"type": "http.response.start", "status": self.status,
                       "headers": self.headers})
        self.headers_sent = True

    def write(self, data: bytes) -> None:
        """Send one chunk now (also the legacy ``write`` callable of PEP 3333)."""
        if not data or self.complete:
            return  # PEP 3333: headers wait for the first non-empty chunk
        if not self.headers_sent:
            self._start()
        if self.content_length is not None:
            data = data[:self.content_length - self.sent_bytes]
        self.sent_bytes += len(data)
        self.complete = self.sent_bytes == self.content_length
        self.req.send({"type": "http.response.body", "body": bytes(data),
                       "more_body": not self.complete})

    def finish(self) -> None:
        if not self.headers_sent:
            self._start()
        if not self.complete:
            self.complete = True
            self.req.send({"type": "http.response.body", "body": b"", "more_body": False})


def build_environ(scope: dict, body, disconnected: threading.Event, *,
                  body_bytes: int = 0) -> dict[str, Any]:
    """The PEP 3333 environ for an ASGI http ``scope`` and a readable, rewound ``body``.

    A body sent without Content-Length (chunked) gets ``CONTENT_LENGTH`` = ``body_bytes``.
    """
    root_path = scope.get("root_path", "") or ""
    path = scope["path"]
    if root_path and (path == root_path or path.startswith(root_path.rstrip("/") + "/")):
        path = path[len(root_path.rstrip("/")):]
    scheme = scope.get("scheme", "http")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root_path.rstrip("/").encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        DISCONNECTED_KEY: disconnected,
    }
    host = None
    merged: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if "_" in name:
            continue  # like gunicorn: "x_a" and "x-a" would both become HTTP_X_A
        if name == "host" and host is None:
            host = value
        key = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}.get(
            name, "HTTP_" + name.upper().replace("-", "_"))
        merged.setdefault(key, []).append(value)
    for key, values in merged.items():
        environ[key] = ("; " if key == "HTTP_COOKIE" else ",").join(values)
    if body_bytes and "CONTENT_LENGTH" not in environ:
        environ["CONTENT_LENGTH"] = str(body_bytes)
    server = scope.get("server")
    if server and server[1] is not None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server[0], str(server[1])
    else:
        environ["SERVER_NAME"] = (host or "localhost").rsplit(":", 1)[0]
        environ["SERVER_PORT"] = "443" if scheme == "https" else "80"
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    return environ


async def _send_error(send: Callable, err: APIError, *, close: bool = False) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in err.headers().items())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class WSGIBridge:
    """ASGI 3 app serving a WSGI app on a bounded thread pool, streaming, disconnect-aware."""

    def __init__(self, app: Callable, *, max_workers: int = 16, max_body_bytes: int | None = None,
                 retry_after_s: int = 2, on_reject: Callable[[int], None] | None = None):
        """``max_workers``: requests run at once; ``max_body_bytes``: 413 beyond (None: no cap);
        ``retry_after_s``: the Retry-After of the 503 answered once shutting down;
        ``on_reject(status)``: called for each answer the bridge gives without the app."""
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        if max_body_bytes is not None and max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.app = app
        self.max_workers = max_workers
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self._on_reject = on_reject
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="wsgi")
        self._active: set[_Request] = set()
        self._lock = threading.Lock()
        self._closed = False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"WSGIBridge serves http scopes only, got {scope['type']!r}")
        read = await self._read_body(scope, receive, send)
        if read is None:
            return
        body, body_bytes = read
        req = _Request(asyncio.get_running_loop(), send)
        environ = build_environ(scope, body, req.disconnected, body_bytes=body_bytes)
        with self._lock:
            if self._closed:
                fut = None
            else:
                self._active.add(req)
                fut = self._pool.submit(self._run, environ, req)
        if fut is None:
            body.close()
            await self._reject(send, ShuttingDown(self.retry_after_s))
            return
        watcher = asyncio.create_task(self._watch(receive, req))
        try:
            await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None  # a coroutine awaited by the server runs in a task
            if fut.cancelled() and not task.cancelling():
                await self._reject(send, ShuttingDown(self.retry_after_s))  # queued at shutdown()
                return
            req.disconnect()  # the server cancelled us: the worker stops within one chunk
            raise
        finally:
            watcher.cancel()
            if fut.cancelled():
                body.close()  # _run never ran
            with self._lock:
                self._active.discard(req)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new requests (503), stop running responses within one chunk, stop the pool.

        Safe to call from the event loop thread: waits on sends are cancelled, so ``wait=True``
        blocks only until each running app returns its next chunk.
        """
        with self._lock:
            self._closed = True
            active = list(self._active)
        for req in active:
            req.disconnect()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    async def _reject(self, send: Callable, err: APIError, *, close: bool = False) -> None:
        """Answer ``err`` without running the app, and count it."""
        if self._on_reject is not None:
            self._on_reject(err.status)
        await _send_error(send, err, close=close)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        """Acknowledge startup/shutdown when served directly (func-python handles its own)."""
        for _ in range(2):
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, scope: dict, receive: Callable, send: Callable):
        """(body file rewound, size in bytes); None when answered (413) or the client is gone."""
        limit = self.max_body_bytes
        if limit is not None:
            for name, value in scope.get("headers", []):
                if name.lower() == b"content-length" and value.strip().isdigit() \
                        and int(value) > limit:
                    await self._reject(send, RequestTooLarge("Request body is too large."),
                                       close=True)
                    return None
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                body.close()
                await self._reject(send, RequestTooLarge("Request body is too large."),
                                   close=True)
                return None
            body.write(chunk)
            if not message.get("more_body", False):
                break
        body.seek(0)
        return body, size

    @staticmethod
    async def _watch(receive: Callable, req: _Request) -> None:
        """After the body: wait for ``http.disconnect`` and tell the worker."""
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        except Exception as exc:  # the server cannot tell us any more: assume the worst
            log.debug("receive failed, treating the client as gone: %r", exc)
        req.disconnect()

    def _run(self, environ: dict, req: _Request) -> None:
        """Worker thread: call the app, send its chunks, close the iterable (PEP 3333)."""
        resp = _Response(req)
        iterable: Iterable[bytes] | None = None
        try:
            if req.disconnected.is_set():
                return  # gone while queued for a thread
            iterable = self.app(environ, resp.start_response)
            for chunk in iterable:
                if req.disconnected.is_set():
                    break
                resp.write(chunk)
                if resp.complete:
                    break
            if not req.disconnected.is_set():
                resp.finish()
        except _Disconnected:
            pass
        except Exception:
            log.exception("WSGI app failed on %s %s", environ["REQUEST_METHOD"],
                          environ["PATH_INFO"])
            if not resp.headers_sent and not req.disconnected.is_set():
                self._send_500(req)
            # headers already sent: return without the final body message, so the server
            # ends the connection and the client sees a truncated response
        finally:
            if iterable is not None and hasattr(iterable, "close"):
                try:
                    iterable.close()
                except Exception:
                    log.exception("closing the WSGI iterable failed")
            environ["wsgi.input"].close()

    @staticmethod
    def _send_500(req: _Request) -> None:
        body = json.dumps(internal_error().body()).encode()
        try:
            req.send({"type": "http.response.start", "status": 500,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode())]})
            req.send({"type": "http.response.body", "body": body, "more_body": False})
        except _Disconnected:
            pass
