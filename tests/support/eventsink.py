"""A real CloudEvents sink on 127.0.0.1 for tests: records requests, answers from a script."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WAIT_S = 20.0  # generous upper bound for threading.Event waits; never a timing assertion


class Receiver:
    """A CloudEvents sink that records requests and answers from a script.

    ``script`` holds one action per request: an HTTP status, or "hang" (wait for
    ``release`` before answering 202). When empty, it answers ``default``.
    """

    def __init__(self):
        self.script: deque = deque()
        self.default = 202
        self.release = threading.Event()
        self.requests: list[dict] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    action = receiver.script.popleft() if receiver.script else receiver.default
                    record = {"headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body, "status": None}
                    receiver.requests.append(record)
                    receiver.cond.notify_all()
                if action == "hang":
                    receiver.release.wait(WAIT_S)
                    action = 202
                record["status"] = action
                try:
                    self.send_response(action)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def wait_requests(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.requests) >= n, WAIT_S)

    def events(self) -> list[dict]:
        """Recorded events as {"headers", "data"} (data decoded from JSON)."""
        with self.cond:
            return [{"headers": r["headers"], "data": json.loads(r["body"] or b"null")}
                    for r in self.requests]

    def event_data(self, request_id: str, deadline_s: float = 60.0) -> dict:
        """The data of the event for ``request_id`` (events arrive asynchronously, in any
        order); AssertionError when none came within ``deadline_s``."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            events = self.events()
            for e in events:
                if e["data"]["request_id"] == request_id:
                    return e["data"]
            self.wait_requests(len(events) + 1)
        raise AssertionError(f"no event for {request_id}")


@contextlib.contextmanager
def running_receiver():
    """A started Receiver, shut down on exit."""
    rec = Receiver()
    thread = threading.Thread(target=rec.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        rec.server.shutdown()
        rec.server.server_close()
