"""Run a scripts/services.py server for the length of a pytest fixture."""
from __future__ import annotations

import services  # scripts/services.py


def started(server, deadline_s: float = 60):
    """Start ``server`` (installing the binaries if needed) and yield it until teardown."""
    services.ensure_binaries()
    server.start()
    try:
        server.wait_ready(deadline_s=deadline_s)
        yield server
    finally:
        server.stop()
