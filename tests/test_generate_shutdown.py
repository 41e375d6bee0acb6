"""Graceful stop under gunicorn: SIGTERM mid-stream lets the stream finish, events are flushed."""
from __future__ import annotations

import json
import threading

import requests

from scripts import procs
from scripts.model_files import smollm2_path
from tests.support.calls import QUESTION, WAIT_S
from tests.support.eventsink import running_receiver


def test_sigterm_finishes_the_stream_and_flushes_events(tmp_path):
    with running_receiver() as sink:
        env = {"MODEL_URI": f"file://{smollm2_path()}", "N_THREADS": "2", "K_SINK": sink.url,
               "SHUTDOWN_GRACE_S": "60", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
        server = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                       log_path=tmp_path / "gunicorn.log").start()
        try:
            server.wait_ready(180)
            resp = requests.post(f"{server.url}/v1/chat/completions", stream=True,
                                 timeout=WAIT_S, json={"messages": QUESTION, "max_tokens": 48,
                                                       "temperature": 0, "stream": True})
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith(b"data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
            code = {}
            stopper = threading.Thread(target=lambda: code.setdefault("rc", server.stop(90)))
            stopper.start()  # SIGTERM while the stream runs
            rest = [line for line in lines if line]
            stopper.join(120)
        finally:
            server.stop()
        assert rest[-1] == b"data: [DONE]", server.log_tail()
        assert code["rc"] == 0, server.log_tail()
        data = sink.event_data(resp.headers["X-Request-Id"])
    assert data["status"] == 200 and data["finish_reason"] in ("stop", "length")
