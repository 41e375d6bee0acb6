"""Graceful stop under gunicorn: SIGTERM mid-stream lets the stream finish, events are flushed."""
from __future__ import annotations

import json
import threading

import requests

import services
from tests.support.eventsink import running_receiver
from tests.support.procs import ROOT, ServerProcess, gunicorn_cmd
from test_generate_e2e import QUESTION, smollm2_path, wait_event

WAIT_S = 60


def test_sigterm_finishes_the_stream_and_flushes_events(tmp_path):
    port = services.free_port()
    with running_receiver() as sink:
        env = {"MODEL_URI": f"file://{smollm2_path()}", "N_THREADS": "2", "K_SINK": sink.url,
               "SHUTDOWN_GRACE_S": "60", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
        server = ServerProcess(gunicorn_cmd("generate", port), port=port, env=env, cwd=ROOT,
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
        data = wait_event(sink, resp.headers["X-Request-Id"])
    assert data["status"] == 200 and data["finish_reason"] in ("stop", "length")
