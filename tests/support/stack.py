"""Run a scripts/services.py server for the length of a pytest fixture."""
from __future__ import annotations

from scripts import procs, services


def started(server, deadline_s: float = 60):
    """Start ``server`` (installing the binaries if needed) and yield it until teardown."""
    services.ensure_binaries()
    server.start()
    try:
        server.wait_ready(deadline_s=deadline_s)
        yield server
    finally:
        server.stop()


class Functions:
    """Our functions as gunicorn processes for one fixture, on free ports, with a shared weight
    cache under ``tmp``; all stopped when the ``with`` block ends, the last started first (audit,
    started first to be the others' sink, stops last)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.started: dict[str, procs.ServerProcess] = {}

    def start(self, name: str, env: dict[str, str]) -> procs.ServerProcess:
        self.started[name] = procs.gunicorn_server(
            name, procs.free_port(), log_path=self.tmp / f"{name}.log",
            env={"MODEL_CACHE_DIR": str(self.tmp / "cache"), "N_THREADS": "1", **env}).start()
        return self.started[name]

    def wait_ready(self, deadline_s: float) -> None:
        for proc in self.started.values():
            proc.wait_ready(deadline_s)

    def __enter__(self) -> Functions:
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(list(self.started.values())):
            proc.stop()
