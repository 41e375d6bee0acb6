"""The OpenAI-compatible generation API: /v1/completions and /v1/chat/completions.

Up to SLOTS generations run together on the scheduler's thread (continuous batching, see
scheduler.py); the request thread formats the answer, as JSON or as SSE (OpenAI's chunk format, ``data: [DONE]`` at the end, and a comment
heartbeat while the prompt is processed so idle timeouts do not cut the stream).
"""
from __future__ import annotations

import json
import logging
import queue
import time
from typing import Iterator

from flask import Flask, Response, jsonify, request

from llmfn import event_requests
from llmfn.errors import APIError, ContextLengthExceeded, InvalidRequest, NotReady, internal_error
from llmfn.origin import Origin, current_origin
from llmfn.model_runtime import Runtime
from llmfn.webapp import check_model, json_body

from . import schema
from .engine import Engine
from .scheduler import Generation, Outcome, Scheduler
from .settings import FUNCTION, GenerateSettings

log = logging.getLogger(__name__)

HEARTBEAT = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def register(app: Flask, runtime: Runtime, *, gen: GenerateSettings) -> Scheduler:
    """Add the generation routes to ``app``; returns the scheduler (drained on stop)."""
    server = runtime.settings.server
    scheduler = Scheduler(lambda: runtime.host.model, gen.slots, queue_size=server.queue_size,
                          retry_after_s=server.retry_after_s, metrics=runtime.metrics,
                          registry=runtime.metrics.registry)
    api = GenerateAPI(runtime, scheduler)
    app.add_url_rule("/v1/completions", "completions", api.completions, methods=["POST"])
    app.add_url_rule("/v1/chat/completions", "chat_completions", api.chat, methods=["POST"])
    event_requests.register(app, runtime, event_requests.served_by(FUNCTION))
    return scheduler


class GenerateAPI:
    def __init__(self, runtime: Runtime, scheduler: Scheduler):
        self.rt = runtime
        self.scheduler = scheduler

    def completions(self):
        return self._serve(chat=False)

    def chat(self):
        return self._serve(chat=True)

    # -- request flow -------------------------------------------------------------------------
    def _engine(self) -> Engine:
        ok, reason = self.rt.ready()
        if not ok:
            raise NotReady(f"The model is not ready yet ({reason}). Retry shortly.",
                           retry_after_s=self.rt.settings.server.retry_after_s)
        return self.rt.host.model

    def _serve(self, *, chat: bool):
        t0 = time.perf_counter()
        origin = current_origin()
        stream = False
        try:
            engine = self._engine()
            body = json_body()
            stream = body.get("stream") is True
            check_model(body, self.rt.host.model_id)
            default_max = self.rt.settings.model.default_max_tokens
            if chat:
                req = schema.chat(body, default_max)
                if not engine.has_chat_template:
                    raise InvalidRequest("This model has no chat template; use /v1/completions.",
                                         param="messages")
                tokens, stops = engine.tokenize_chat(req.messages)
                req.params.stop = req.params.stop + [s for s in stops
                                                     if s not in req.params.stop]
            else:
                req = schema.completion(body, default_max)
                tokens = self._prompt_tokens(engine, req.prompt)
            self._fit_context(engine, tokens, req, "messages" if chat else "prompt")
            job = self.scheduler.submit(Generation(
                tokens, req.params, t0=t0, disconnected=request.environ.get("llmfn.disconnected")))
        except APIError as err:
            self._event(origin, t0, status=err.status, error_code=err.code, stream=stream)
            raise
        cold = self.rt.host.take_cold_start()
        call = _Call(origin=origin, t0=t0, chat=chat, req=req, prompt_tokens=len(tokens), job=job,
                     cold=cold, model=self.rt.host.model_id)
        if self.rt.settings.events.include_text:
            call.prompt_text = _prompt_text(engine, req, tokens)
        if req.stream:
            resp = Response(self._sse(call), mimetype="text/event-stream")
            resp.headers["Cache-Control"] = "no-cache"
            resp.headers["X-Accel-Buffering"] = "no"
        else:
            resp = self._json(call)
        resp.headers["X-Request-Id"] = origin.rid
        return resp

    @staticmethod
    def _prompt_tokens(engine: Engine, prompt) -> list[int]:
        if isinstance(prompt, str):
            tokens = engine.tokenize_prompt(prompt)
            if not tokens:  # "" (the vocab adds no BOS): generate from BOS, as OpenAI does
                if engine.bos < 0:
                    raise InvalidRequest("'prompt' must not be empty for this model.",
                                         param="prompt")
                tokens = [engine.bos]
            return tokens
        n_vocab = engine.n_vocab
        if any(t >= n_vocab for t in prompt):
            raise InvalidRequest(f"'prompt' token ids must be < {n_vocab}.", param="prompt")
        return list(prompt)

    @staticmethod
    def _fit_context(engine: Engine, tokens: list[int], req: schema.Request, where: str) -> None:
        """Reject a prompt that does not fit before generating (counted in tokens)."""
        room = engine.n_ctx - len(tokens)
        if req.max_tokens_given:
            over = len(tokens) + req.params.max_tokens > engine.n_ctx
            wanted = req.params.max_tokens
        else:
            over = room < 1
            wanted = 1
            req.params.max_tokens = max(1, min(req.params.max_tokens, room))
        if over:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {engine.n_ctx} tokens. However, you "
                f"requested {len(tokens) + wanted} tokens ({len(tokens)} in the {where}, "
                f"{wanted} in the completion). Please reduce the length of the {where} or "
                "completion.", param=where)

    # -- answers ------------------------------------------------------------------------------
    def _json(self, call: "_Call"):
        try:
            outcome = call.job.wait()
        except APIError as err:  # shutting down before it got a slot
            self._finish(call, None, status=err.status, error_code=err.code)
            raise
        except BaseException:
            log.exception("generation failed")
            self._finish(call, None, status=500, error_code="internal_error")
            raise internal_error() from None
        body = call.response(outcome)
        self._finish(call, outcome, status=200)
        return jsonify(body)

    def _sse(self, call: "_Call") -> Iterator[bytes]:
        """The SSE body; closing it (client gone) cancels the generation."""
        outcome, status, code = None, 200, None
        heartbeat_s = self.rt.settings.server.heartbeat_s
        try:
            if call.chat:
                yield call.chunk({"role": "assistant", "content": ""}, None)
            while True:
                try:
                    kind, value = call.job.events.get(timeout=heartbeat_s)
                except queue.Empty:
                    yield HEARTBEAT
                    continue
                if kind == "text":
                    yield call.chunk(value, None)
                elif kind == "done":
                    outcome = value
                    yield call.chunk({} if call.chat else "", client_finish(outcome))
                    if call.req.include_usage:
                        yield call.usage_chunk(outcome.completion_tokens)
                    break
                elif isinstance(value, APIError):  # shutting down before it got a slot
                    status, code = value.status, value.code
                    yield _sse_error(value)
                    break
                else:
                    log.error("generation failed", exc_info=value)
                    status, code = 500, "internal_error"
                    yield _sse_error(internal_error())
                    break
            yield DONE
        except GeneratorExit:
            status, code = 499, "client_disconnected"
            raise
        finally:
            call.job.cancel()
            if outcome is None and status == 499:
                call.job.done.wait(30)  # the scheduler stops the slot within one token
                outcome = call.job.outcome
            self._finish(call, outcome, status=status, error_code=code)

    # -- accounting ---------------------------------------------------------------------------
    def _finish(self, call: "_Call", outcome: Outcome | None, *, status: int,
                error_code: str | None = None) -> None:
        m, model = self.rt.metrics, call.model
        m.prompt_tokens.labels(model=model).inc(call.prompt_tokens)
        if outcome is not None:
            m.completion_tokens.labels(model=model).inc(outcome.completion_tokens)
            m.generation.labels(model=model).observe(outcome.generation_s)
            if outcome.ttft_s is not None:
                m.ttft.labels(model=model).observe(outcome.ttft_s)
        duration = time.perf_counter() - call.t0
        if call.req.stream:
            m.request_duration.labels(route=request_route(call)).observe(duration)
        self.rt.emit_inference(
            call.origin, endpoint=request_route(call), status=status, error_code=error_code,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=outcome.completion_tokens if outcome else 0,
            ttft_s=outcome.ttft_s if outcome else None, duration_s=duration,
            generation_s=outcome.generation_s if outcome else None,
            finish_reason=outcome.finish_reason if outcome else "error",
            cold_start=call.cold, stream=call.req.stream,
            prompt=call.prompt_text, output=outcome.text if outcome else None)

    def _event(self, origin: Origin, t0: float, *, status: int, error_code: str | None,
               stream: bool) -> None:
        self.rt.emit_inference(origin, endpoint=request.path, status=status, error_code=error_code,
                               duration_s=time.perf_counter() - t0, finish_reason="error",
                               stream=stream)


def request_route(call: "_Call") -> str:
    return "/v1/chat/completions" if call.chat else "/v1/completions"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse_error(err: APIError) -> bytes:
    return _sse_data(err.body())


class _Call:
    """The state of one admitted request while it is answered."""

    def __init__(self, *, origin: Origin, t0, chat, req, prompt_tokens, job: Generation, cold,
                 model):
        self.origin, self.t0, self.chat, self.req = origin, t0, chat, req
        self.rid, self.created = origin.rid, origin.created
        self.prompt_tokens, self.job = prompt_tokens, job
        self.cold, self.model = cold, model
        self.prompt_text: str | None = None  # only with EVENTS_INCLUDE_TEXT

    def _head(self, *, stream: bool) -> dict:
        """id, object, created and model: what every body and chunk of this request carries."""
        if self.chat:
            head = {"id": f"chatcmpl-{self.rid}",
                    "object": "chat.completion.chunk" if stream else "chat.completion"}
        else:
            head = {"id": f"cmpl-{self.rid}", "object": "text_completion"}
        head.update({"created": self.created, "model": self.model})
        return head

    def _choice(self, content, finish: str | None, *, stream: bool) -> dict:
        """One choice: chat has a message (a delta when streamed), completions have text."""
        if not self.chat:
            return {"text": content, "index": 0, "logprobs": None, "finish_reason": finish}
        if stream:
            delta = {"content": content} if isinstance(content, str) else content
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": content},
                "logprobs": None, "finish_reason": finish}

    def response(self, outcome: Outcome) -> dict:
        """The whole answer of a non-streamed request (OpenAI's completion objects)."""
        return {**self._head(stream=False),
                "choices": [self._choice(outcome.text, client_finish(outcome), stream=False)],
                "usage": _usage(self.prompt_tokens, outcome.completion_tokens)}

    def chunk(self, delta, finish: str | None) -> bytes:
        """One SSE chunk; ``delta`` is new text (or, for chat, a ready delta object)."""
        body = {**self._head(stream=True),
                "choices": [self._choice(delta, finish, stream=True)]}
        if self.req.include_usage:
            body["usage"] = None
        return _sse_data(body)

    def usage_chunk(self, completion_tokens: int) -> bytes:
        """The last chunk with `stream_options.include_usage`: no choices, the usage."""
        return _sse_data({**self._head(stream=True), "choices": [],
                          "usage": _usage(self.prompt_tokens, completion_tokens)})


def _prompt_text(engine: Engine, req: schema.Request, tokens: list[int]) -> str:
    """The prompt as the event's text: a chat as `role: content` lines, a completion prompt as
    given (token ids detokenized)."""
    if req.messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in req.messages)
    if isinstance(req.prompt, str):
        return req.prompt
    return engine.llm.detokenize(tokens).decode("utf-8", errors="replace")


def client_finish(outcome: Outcome) -> str:
    """The finish_reason a client sees: a cancelled generation (its client left, or shutdown)
    ended like a stop; the event keeps "cancelled"."""
    return "stop" if outcome.finish_reason == "cancelled" else outcome.finish_reason


def _sse_data(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
