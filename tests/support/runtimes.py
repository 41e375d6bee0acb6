"""Started function runtimes for a function's own tests, stopped at teardown."""
from __future__ import annotations

from typing import Callable, Mapping

WAIT_S = 60


class RuntimeFactory:
    """``make(wait=True, **env)``: a started runtime from ``create_runtime`` with ``base``
    settings, ``env`` on top (settings keys); waits for the model unless ``wait`` is False."""

    def __init__(self, create_runtime: Callable, base: Mapping[str, str]):
        self.create_runtime = create_runtime
        self.base = dict(base)
        self.made = []

    def __call__(self, wait: bool = True, **env):
        rt = self.create_runtime({**self.base, **{k: str(v) for k, v in env.items()}})
        self.made.append(rt)
        rt.start()
        if wait:
            assert rt.host.wait(WAIT_S), rt.ready()
        return rt

    def stop_all(self) -> None:
        for rt in self.made:
            rt.stop()
