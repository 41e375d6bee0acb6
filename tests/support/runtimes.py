"""Started function runtimes for a function's own tests, stopped at teardown."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from flask.testing import FlaskClient

WAIT_S = 60


class BufferedClient(FlaskClient):
    """A test client that reads and closes each response unless a test asks for
    ``buffered=False`` (to read a stream as it comes). An unclosed streamed response is still
    in flight to the runtime, and its stop would wait the whole grace for it."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


class RuntimeFactory:
    """``make(wait=True, **env)``: a started runtime from ``create_runtime`` with ``base``
    settings, ``env`` on top (settings keys); waits for the model unless ``wait`` is False.
    In-process nothing polls readiness, so stops do not hold the port (SHUTDOWN_MIN_S 0)."""

    def __init__(self, create_runtime: Callable, base: Mapping[str, str]):
        self.create_runtime = create_runtime
        self.base = {"SHUTDOWN_MIN_S": "0", **base}
        self.made = []

    def __call__(self, wait: bool = True, **env):
        rt = self.create_runtime({**self.base, **{k: str(v) for k, v in env.items()}})
        rt.app.test_client_class = BufferedClient
        self.made.append(rt)
        rt.start()
        if wait:
            assert rt.host.wait(WAIT_S), rt.ready()
        return rt

    def stop_all(self) -> None:
        for rt in self.made:
            rt.stop()
