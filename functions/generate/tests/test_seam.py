"""The chat pipeline's internal entry for other APIs (GenerateAPI.run_chat): typed answers and
chunks, the caller's route and api in the inference event, errors raised before and during."""
from __future__ import annotations

import pytest

from function import protocol
from function.api import KEEPALIVE, GenerateAPI
from llmfn import routes
from llmfn.errors import APIError, ContextLengthExceeded
from llmfn.origin import Origin
from tests.support.eventsink import running_receiver

WAIT_S = 30.0
ROUTE = "/v1/responses"


def api_of(rt) -> GenerateAPI:
    return routes.handler(rt.app, "/v1/chat/completions").__self__


def inbound() -> routes.Inbound:
    def unread() -> dict:
        raise AssertionError("run_chat must not read the caller's body")
    return routes.Inbound(ROUTE, Origin.fresh(), unread)


def chat(**kw) -> protocol.ChatCompletionRequest:
    return protocol.ChatCompletionRequest(
        messages=[protocol.Message(role="user", content="vpvm")], temperature=0, **kw)


def test_answer_chunks_and_events_of_another_api(make_runtime):
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        api = api_of(rt)
        answer = api.run_chat(inbound(), chat(max_tokens=3), api="responses")
        assert isinstance(answer, protocol.ChatCompletion)
        assert answer.usage.completion_tokens == 3 and answer.usage.prompt_tokens > 0
        direct = rt.app.test_client().post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "vpvm"}], "max_tokens": 3,
            "temperature": 0}).get_json()
        assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]

        chunks = list(api.run_chat(inbound(), chat(max_tokens=3, stream=True), api="responses"))
        typed = [c for c in chunks if c is not KEEPALIVE]
        assert all(isinstance(c, protocol.ChatCompletionChunk) for c in typed)
        assert typed[0].choices[0].delta.role == "assistant"
        assert typed[-2].choices[0].finish_reason == "length"
        assert typed[-1].choices == [] and typed[-1].usage.completion_tokens == 3  # usage always
        text = "".join(c.choices[0].delta.content for c in typed[1:-2]
                       if isinstance(c.choices[0].delta.content, str))
        assert text == answer.choices[0].message.content

        with pytest.raises(ContextLengthExceeded):  # before generating: raised, recorded
            api.run_chat(inbound(), chat(max_tokens=10_000), api="responses")
        assert rt.events.flush(WAIT_S) and sink.wait_requests(4)
        events = [e["data"] for e in sink.events()]
    ours = [e for e in events if e["endpoint"] == ROUTE]
    assert [e["status"] for e in ours] == [200, 200, 400]
    assert [e["stream"] for e in ours] == [False, True, False]
    assert {e["api"] for e in ours} == {"responses"}


def test_closing_the_chunks_cancels_and_a_late_error_is_raised(make_runtime, hold_first_step):
    import threading

    from function.scheduler import Failed
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        api = api_of(rt)
        release = threading.Event()
        hold_first_step(api.scheduler, release)
        # a failure after the first chunk is raised from the iterator (the API writes it)
        failing = api.run_chat(inbound(), chat(max_tokens=50, stream=True), api="responses")
        assert next(failing).choices[0].delta.role == "assistant"
        failing.gi_frame.f_locals["call"].events.put(Failed(RuntimeError("engine fault"), 0))
        release.set()
        with pytest.raises(APIError) as raised:
            list(failing)
        assert raised.value.status == 500
        # closing the iterator (the client left) cancels the generation
        chunks = api.run_chat(inbound(), chat(max_tokens=200, stream=True), api="responses")
        next(chunks)
        job = chunks.gi_frame.f_locals["call"].jobs[0]
        chunks.close()
        assert job.done.wait(WAIT_S) and job.outcome.finish_reason == "cancelled"
        assert rt.events.flush(WAIT_S) and sink.wait_requests(2)
        assert [e["data"]["status"] for e in sink.events()] == [500, 499]
