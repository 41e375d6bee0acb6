"""Serve an ASGI app with Hypercorn (func-python's server) in a background thread."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import httpx


@contextlib.contextmanager
def hypercorn_server(app, *, deadline_s: float = 20.0, graceful_timeout_s: float = 1.0):
    """Serve ``app`` on a free 127.0.0.1 port (socket bound here: no port race); yield its URL.

    Ready once ``GET /ping`` gets any answer (bounded by ``deadline_s``); stopped on exit.
    """
    import hypercorn.asyncio
    import hypercorn.config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    started = threading.Event()
    handles: dict = {}

    async def main():
        handles["loop"], handles["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await hypercorn.asyncio.serve(app, config, shutdown_trigger=handles["stop"].wait)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(deadline_s):
        raise RuntimeError("server thread did not start")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=deadline_s) as probe:
        for _ in range(100):
            try:
                probe.get(url + "/ping")
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        else:
            raise RuntimeError("server did not answer /ping")
    try:
        yield url
    finally:
        handles["loop"].call_soon_threadsafe(handles["stop"].set)
        thread.join(deadline_s)
        if thread.is_alive():
            raise RuntimeError("server thread did not stop")
