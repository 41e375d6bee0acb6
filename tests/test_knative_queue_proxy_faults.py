"""What queue-proxy does when the function is slow to answer, dead or not ready (issue 20).

- Response-start timeout: with REVISION_RESPONSE_START_TIMEOUT_SECONDS (the manifest's
  responseStartTimeoutSeconds, shortened here) below a long prompt's prefill, a streamed
  request still succeeds because generate's SSE heartbeat is its first byte; what a
  non-streamed request gets instead is measured and recorded.
- A dead function (SIGKILL) and a function that is not ready: what queue-proxy answers to a
  request and to the activator's probe.

Answers are written to .state/knative/queue-proxy.json for docs/deploy.md.
"""
from __future__ import annotations

import signal
import time

import pytest
import requests

from scripts import knative_pod, procs
from tests.support.queueproxy import function_env, record, revision_spec, stream

START_TIMEOUT_S = 1  # responseStartTimeoutSeconds, shortened below the prefill below
HEARTBEAT_S = 0.25  # SSE_HEARTBEAT_S, below it as 5 s is below the manifest's 300 s
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 30  # ~300 tokens: 2-3 s on 1 thread
WAIT_S = 180


def test_response_start_timeout_heartbeat_vs_plain(tmp_path):
    spec = revision_spec("generate")
    env = function_env("generate", tmp_path, model="smollm2", SSE_HEARTBEAT_S=HEARTBEAT_S)
    override = {"REVISION_RESPONSE_START_TIMEOUT_SECONDS": START_TIMEOUT_S}
    with knative_pod.Pod("generate", spec, env, tmp_path, queue_override=override) as pod:
        pod.start()
        pod.wait_ready(WAIT_S)
        # a distinct start each time: no prefix of an earlier prompt is reused (prompt cache)
        body = {"max_tokens": 4, "temperature": 0}
        direct = stream(pod.direct_url, {**body, "prompt": "1. " + LONG_PROMPT},
                        timeout_s=WAIT_S)
        first_token = direct.token_times()[0]
        assert first_token > START_TIMEOUT_S + 0.3, ("prefill too short to test", first_token)

        proxied = stream(pod.url, {**body, "prompt": "2. " + LONG_PROMPT}, timeout_s=WAIT_S)
        t0 = time.perf_counter()
        plain = requests.post(f"{pod.url}/v1/completions", timeout=WAIT_S,
                              json={**body, "prompt": "3. " + LONG_PROMPT})
        plain_s = time.perf_counter() - t0
        # the pod still serves (streamed: the cut request's prefill may still hold the model
        # for longer than the shortened first-byte timeout)
        after = stream(pod.url, {"prompt": "Hi", "max_tokens": 2}, timeout_s=WAIT_S)
    result = {"response_start_timeout_s": START_TIMEOUT_S, "sse_heartbeat_s": HEARTBEAT_S,
              "prefill_first_token_s": round(first_token, 2),
              "streamed": {"status": proxied.status, "done": proxied.done,
                           "heartbeats": len(proxied.comments),
                           "first_byte_s": round(proxied.t_first_byte or 0, 2)},
              "non_streamed": {"status": plain.status_code, "body": plain.text.strip()[:200],
                               "after_s": round(plain_s, 2)},
              "next_request": {"status": after.status, "done": after.done}}
    record("response_start_timeout", result)
    assert proxied.status == 200 and proxied.done, result
    assert proxied.comments and proxied.comments[0][0] < START_TIMEOUT_S, result
    assert proxied.t_first_byte == proxied.comments[0][0], "the first byte is the heartbeat"
    # what docs/deploy.md tells clients: queue-proxy's own 504 `request timeout`, plain text,
    # at the timeout (before the generation would have sent its first byte)
    assert (plain.status_code, plain.text.strip()) == (504, "request timeout"), result
    assert START_TIMEOUT_S <= plain_s < first_token, result
    assert after.status == 200 and after.done, result


@pytest.fixture
def tiny_pod(tmp_path):
    spec = revision_spec("generate")
    with knative_pod.Pod("generate", spec, function_env("generate", tmp_path), tmp_path) as pod:
        yield pod


def test_not_ready_and_dead_function(tiny_pod):
    """Before the function listens, while it is not ready and once it is dead: queue-proxy's
    answers to a request and to the activator's probe."""
    pod = tiny_pod
    pod.queue.start()
    end = time.monotonic() + 30
    while procs.http_status(pod.netns.pod_addr, knative_pod.ADMIN_PORT, "/")[0] is None:
        assert time.monotonic() < end and pod.queue.running, pod.queue.log_tail()
        time.sleep(0.05)
    answers = {"function_not_started": _answers(pod, probe=False)}
    pod.fn.start()
    pod.fn.wait_listening(60)
    pod.fn.wait_ready(WAIT_S)
    assert pod.probe()[0] == 200
    answers["ready"] = _answers(pod)
    pod.fn._signal_group(signal.SIGKILL)
    pod.fn.proc.wait(10)
    answers["function_killed"] = _answers(pod)
    record("function_not_ready_or_dead", answers)
    for state in ("function_not_started", "function_killed"):
        assert answers[state]["request"]["status"] == 502, answers
    assert answers["function_killed"]["probe"]["status"] == 503, answers
    assert answers["ready"]["request"]["status"] == 200


def _answers(pod, probe: bool = True) -> dict:
    """What a request and (``probe``) the activator's probe get; the probe of a pod that is
    not ready is answered once queue-proxy's 10 s of retries are over."""
    r = requests.post(f"{pod.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                      timeout=30)
    out = {"request": {"status": r.status_code, "body": r.text.strip()[:200]}}
    if probe:
        t0 = time.perf_counter()
        status, body = pod.probe()
        out["probe"] = {"status": status, "body": body.strip()[:100],
                        "answered_after_s": round(time.perf_counter() - t0, 2)}
    return out
