"""The OpenAI-compatible generation API: /v1/completions, /v1/chat/completions, and
llama-server's /tokenize and /detokenize.

Up to SLOTS generations run together on the scheduler's thread (continuous batching, see
scheduler.py); a request with ``n`` choices (or ``best_of`` candidates) holds that many slots.
The request thread formats the answer (answer.py), as JSON or as SSE (OpenAI's chunk format,
``data: [DONE]`` at the end, and a comment heartbeat while the prompt is processed so idle
timeouts do not cut the stream).

Another API (Responses, Messages) translates its request into a typed chat request and calls
:meth:`GenerateAPI.run_chat`, the chat pipeline's one internal entry: it gets the typed answer
(a ``ChatCompletion``) or an iterator of typed chunks and writes its own JSON or SSE.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from typing import Any

from flask import Flask

from llmfn import openapi, routes
from llmfn.errors import APIError, ContextLengthExceeded, InvalidRequest, internal_error
from llmfn.model_runtime import Runtime
from llmfn.protocol import Model
from llmfn.webapp import check_model

from . import messages, protocol, responses, schema, structured
from .answer import Call, sse_data
from .engine import Engine
from .protocol import Delta
from .scheduler import Done, Event, Failed, Generation, Scheduler, Text, Tokens
from .settings import GenerateSettings

log = logging.getLogger(__name__)

HEARTBEAT = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


class KeepAlive:
    """Yielded by a chunk iterator when nothing happened for HEARTBEAT_S (the prompt is still
    being processed): the API writes its keep-alive, so idle timeouts do not cut the stream."""


KEEPALIVE = KeepAlive()
ChatChunks = Generator[protocol.ChatCompletionChunk | KeepAlive, None, None]
"""A streamed chat answer for another API: the role chunk, text (or a tool call, whole),
each choice's finish, then a last chunk with no choices and ``usage``. An error after the
first chunk is raised (an ``APIError``) for the API to write in its own shape; closing the
iterator (the client left) cancels the generation."""


def register(app: Flask, runtime: Runtime, gen: GenerateSettings) -> Scheduler:
    """Add the generation routes to ``app`` (the contract's ``routes``, func.py); returns the
    scheduler, its worker (drained on stop)."""
    server = runtime.settings.server
    scheduler = Scheduler(lambda: runtime.host.model, gen.slots, queue_size=server.queue_size,
                          retry_after_s=server.retry_after_s, metrics=runtime.metrics,
                          registry=runtime.metrics.registry, deadline_s=gen.request_timeout_s,
                          peek=lambda: runtime.host.model)
    api = GenerateAPI(runtime, scheduler)
    routes.add(app, "/v1/completions", "completions", api.completions)
    routes.add(app, "/v1/chat/completions", "chat_completions", api.chat)
    routes.add(app, "/tokenize", "tokenize", api.tokenize)
    routes.add(app, "/detokenize", "detokenize", api.detokenize)
    messages.register(app, api)  # Anthropic's /v1/messages (messages.py)
    responses.register(app, api)  # OpenAI's /v1/responses (responses.py)
    openapi.attach(app, lambda: openapi.function_document(protocol))  # on first GET
    return scheduler


class GenerateAPI:
    def __init__(self, runtime: Runtime, scheduler: Scheduler):
        self.rt = runtime
        self.scheduler = scheduler

    def completions(self, inbound: routes.Inbound) -> routes.Result:
        return self._serve(inbound, chat=False)

    def chat(self, inbound: routes.Inbound) -> routes.Result:
        return self._serve(inbound, chat=True)

    # -- llama-server's tokenizer routes --------------------------------------------------------
    def tokenize(self, inbound: routes.Inbound) -> routes.Result:
        """``{"content": str, "add_special": bool, "with_pieces": bool}`` -> ``{"tokens"}``."""
        engine: Engine = self.rt.model()
        req = protocol.decode(protocol.TokenizeRequest, inbound.body())
        tokens = engine.llm.tokenize(req.content.encode("utf-8"), add_bos=bool(req.add_special),
                                     special=True)
        if req.with_pieces:
            return _json_response(protocol.TokenizeResponse(tokens=[protocol.TokenPiece(
                id=t, piece=engine.piece(t).decode("utf-8", errors="replace")) for t in tokens]))
        return _json_response(protocol.TokenizeResponse(tokens=list(tokens)))

    def detokenize(self, inbound: routes.Inbound) -> routes.Result:
        """``{"tokens": [int]}`` -> ``{"content": str}``."""
        engine: Engine = self.rt.model()
        tokens = protocol.decode(protocol.DetokenizeRequest, inbound.body()).tokens
        if any(t >= engine.n_vocab for t in tokens):
            raise InvalidRequest(f"'tokens' must be token ids below {engine.n_vocab}.",
                                 param="tokens")
        text = b"".join(engine.piece(t) for t in tokens)
        return _json_response(protocol.DetokenizeResponse(
            content=text.decode("utf-8", errors="replace")))

    # -- the seam: the chat pipeline for another API -------------------------------------------
    def run_chat(self, inbound: routes.Inbound, typed: protocol.ChatCompletionRequest, *,
                 api: str, jobs: list[Generation] | None = None
                 ) -> protocol.ChatCompletion | ChatChunks:
        """Answer ``typed`` (another API's request, translated) as chat completions would.

        ``inbound`` is that API's own (its route and ``api`` go in the inference event; its
        disconnect signal cancels). Returns the finished ``ChatCompletion`` (with usage), or,
        with ``typed.stream``, the chunks (:data:`ChatChunks`, usage always in the last). A
        bad request, 404 model, 429 or 503 before generating is raised as an ``APIError`` in
        OpenAI's terms (chat's parameter names): the caller maps it to its shape and names.
        The body of ``inbound`` is not read. ``jobs``, if given, gets the generations, whose
        outcomes say more than chat's answer (the stop string that ended one).
        """
        def parse(_body: dict) -> schema.Request:
            check_model({"model": typed.model}, self.rt.host.model_id)
            req = schema.chat_request(typed, self.rt.settings.model.default_max_tokens,
                                      self.scheduler.capacity)
            req.include_usage = req.stream
            return req

        call = self._start(inbound, chat=True, api=api, parse=parse,
                           stream=typed.stream is True)
        if jobs is not None:
            jobs.extend(call.jobs)
        if call.req.stream:
            return self._chunks(call)
        answer = self._answer(call)
        assert isinstance(answer, protocol.ChatCompletion)
        return answer

    # -- request flow -------------------------------------------------------------------------
    def _serve(self, inbound: routes.Inbound, *, chat: bool) -> routes.Result:
        def parse(body: dict) -> schema.Request:
            check_model(body, self.rt.host.model_id)
            args = (body, self.rt.settings.model.default_max_tokens, self.scheduler.capacity)
            return schema.chat(*args) if chat else schema.completion(*args)

        call = self._start(inbound, chat=chat, api="chat" if chat else "completions",
                           parse=parse)
        if call.req.stream:
            result = routes.stream(self._sse(call))
        else:
            result = _json_response(self._answer(call))
        result.headers["X-Request-Id"] = call.origin.rid
        return result

    def _start(self, inbound: routes.Inbound, *, chat: bool, api: str,
               parse: Callable[[dict], schema.Request], stream: bool | None = None) -> Call:
        """Validate, tokenize and admit one request (``parse`` gets the JSON body); an
        APIError before generating is recorded as an inference event and raised."""
        t0 = time.perf_counter()
        origin = inbound.origin
        req = None
        try:
            engine: Engine = self.rt.model()
            body = inbound.body() if stream is None else {}
            if stream is None:
                stream = body.get("stream") is True
            req = parse(body)
            tokens = self._tokens(engine, req)
            self._fit_context(engine, tokens, req, "messages" if chat else "prompt")
            self._check_request(engine, req)
            jobs = self._submit(tokens, req, t0, inbound.disconnected)
        except APIError as err:
            self._event(inbound, t0, status=err.status, error_code=err.code,
                        stream=bool(stream), req=req, api=api)
            raise
        cold = self.rt.host.take_cold_start()
        echo = self._echo_text(engine, req, tokens) if req.echo else ""
        call = Call(origin=origin, t0=t0, chat=chat, req=req, prompt_tokens=len(tokens),
                    jobs=jobs, cold=cold, model=self.rt.host.model_id, echo_text=echo,
                    route=inbound.route, api=api)
        if self.rt.settings.events.include_text:
            call.prompt_text = _prompt_text(engine, req, tokens)
        return call

    @staticmethod
    def _tokens(engine: Engine, req: schema.Request) -> list[int]:
        if req.messages is not None:
            if not engine.has_chat_template:
                raise InvalidRequest("This model has no chat template; use /v1/completions.",
                                     param="messages")
            tokens, stops = engine.tokenize_chat(
                structured.render_messages(req.messages, req.output))
            req.params.stop = req.params.stop + [s for s in stops if s not in req.params.stop]
            return tokens
        prompt = req.prompt
        if isinstance(prompt, str):
            tokens = engine.tokenize_prompt(prompt)
            if not tokens:  # "" (the vocab adds no BOS): generate from BOS, as OpenAI does
                if engine.bos < 0:
                    raise InvalidRequest("'prompt' must not be empty for this model.",
                                         param="prompt")
                tokens = [engine.bos]
            return tokens
        assert prompt is not None  # a request without messages has its prompt (schema.parse)
        n_vocab = engine.n_vocab
        if any(t >= n_vocab for t in prompt):
            raise InvalidRequest(f"'prompt' token ids must be < {n_vocab}.", param="prompt")
        return list(prompt)

    @staticmethod
    def _check_request(engine: Engine, req: schema.Request) -> None:
        """What only the model can tell: token ids in logit_bias; the schema compiled with the
        model's tokenizer (here, off the scheduler's thread; a 400 if it cannot be enforced)."""
        if any(t >= engine.n_vocab for t in req.params.logit_bias):
            raise InvalidRequest(f"'logit_bias' token ids must be < {engine.n_vocab}.",
                                 param="logit_bias")
        output = req.output
        if output.schema is not None:
            output.grammar = engine.compiler.compile(output.schema, output.param)
            req.params.grammar = output.grammar

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

    def _submit(self, tokens: list[int], req: schema.Request, t0: float,
                disconnected: threading.Event | None) -> list[Generation]:
        """One generation per choice (``best_of`` candidates), all admitted or none (429)."""
        events: queue.Queue = queue.Queue()
        jobs = []
        for i in range(req.best_of):
            params = req.params
            if i or req.best_of > req.n:
                seed = None if params.seed is None else params.seed + i
                params = dataclasses.replace(params, seed=seed,
                                             logprobs=params.logprobs if params.logprobs is not None
                                             else (0 if req.best_of > req.n else None))
            jobs.append(Generation(tokens, params, t0=t0, disconnected=disconnected,
                                   index=i, events=events))
        return self.scheduler.submit_all(jobs)

    @staticmethod
    def _echo_text(engine: Engine, req: schema.Request, tokens: list[int]) -> str:
        if isinstance(req.prompt, str):
            return req.prompt
        return b"".join(engine.piece(t) for t in tokens).decode("utf-8", errors="replace")

    # -- answers ------------------------------------------------------------------------------
    def _answer(self, call: Call) -> protocol.Completion | protocol.ChatCompletion:
        try:
            outcomes = [job.wait() for job in call.jobs]
        except APIError as err:  # shutting down before it got a slot
            self._finish(call, status=err.status, error_code=err.code)
            raise
        except BaseException:
            log.exception("generation failed")
            self._finish(call, status=500, error_code="internal_error")
            raise internal_error() from None
        try:
            for outcome in outcomes:
                self._verify(call, outcome)
        except structured.OutputInvalid as err:
            self._finish(call, status=err.status, error_code=err.code)
            raise
        if call.req.best_of > call.req.n:  # the best by log-probability per token
            outcomes = sorted(outcomes, key=lambda o: -o.logprob_sum / max(
                1, o.completion_tokens))[:call.req.n]
            if call.req.params.logprobs is None:
                for o in outcomes:
                    o.tokens = None
        body = call.response(outcomes)
        self._finish(call, status=200)
        return body

    def _sse(self, call: Call) -> Iterator[bytes]:
        """The SSE body (OpenAI's chunks, then ``[DONE]``); closing it (client gone) cancels
        the generations."""
        with closing(self._chunks(call)) as chunks:
            try:
                for chunk in chunks:
                    yield HEARTBEAT if chunk is KEEPALIVE else sse_data(chunk)
            except APIError as err:  # after the first chunk: in the stream, then [DONE]
                yield sse_data(err.body())
        yield DONE

    def _chunks(self, call: Call) -> Generator[Any, None, None]:
        """The typed chunks of a streamed answer and KEEPALIVE; an error after the start is
        raised (its status recorded); closing it (client gone) cancels the generations."""
        status, code, open_choices = 200, None, len(call.jobs)
        held: dict[int, list[str]] = {i: [] for i in range(open_choices)}
        heartbeat_s = self.rt.settings.server.heartbeat_s
        try:
            if call.chat:
                for i in range(open_choices):
                    yield call.chunk(i, Delta(role="assistant", content=""))
            pending_tokens: dict[int, list] = {}
            while open_choices:
                try:
                    event: Event = call.events.get(timeout=heartbeat_s)
                except queue.Empty:
                    yield KEEPALIVE
                    continue
                match event:
                    case Tokens(tokens, index):
                        pending_tokens.setdefault(index, []).extend(tokens)
                    case Text(text, index) if call.buffered:
                        held[index].append(text)
                    case Text(text, index):
                        yield call.chunk(index, text, tokens=pending_tokens.pop(index, None))
                    case Done(outcome, index):
                        open_choices -= 1
                        try:
                            self._verify(call, outcome)
                        except structured.OutputInvalid as err:
                            status, code = err.status, err.code
                            raise
                        yield from call.last_chunks(index, outcome, "".join(held[index]))
                    case Failed(APIError() as error):  # shutting down before it got a slot
                        status, code = error.status, error.code
                        raise error
                    case Failed(error):
                        log.error("generation failed", exc_info=error)
                        status, code = 500, "internal_error"
                        raise internal_error() from None
            if call.req.include_usage:
                yield call.usage_chunk()
        except GeneratorExit:
            status, code = 499, "client_disconnected"
            raise
        finally:
            for job in call.jobs:
                job.cancel()
            if status == 499:
                for job in call.jobs:
                    job.done.wait(30)  # the scheduler stops the slot within one token
            self._finish(call, status=status, error_code=code)

    @staticmethod
    def _verify(call: Call, outcome) -> None:
        """The safety net after decoding: a constrained answer that ended ``stop`` must
        validate against its schema (jsonschema, the schema's dialect and format checker), or
        the client gets OutputInvalid (500), never a 200 breaking it; one cut short by a
        cancel (shutdown) that does not validate ends ``length``."""
        grammar = call.req.output.grammar
        if grammar is None or outcome.finish_reason not in ("stop", "cancelled"):
            return
        why = grammar.violation(outcome.text)
        if why is None:
            return
        if outcome.finish_reason == "cancelled":
            outcome.finish_reason = "length"
            return
        log.error("structured output broke its schema %s: %s", grammar.key[:12], why)
        raise structured.OutputInvalid(
            f"The generated answer does not validate against the schema ({why}); it was not "
            "returned.", param=call.req.output.param)

    # -- accounting ---------------------------------------------------------------------------
    def _finish(self, call: Call, *, status: int, error_code: str | None = None) -> None:
        m, model = self.rt.metrics, call.model
        m.prompt_tokens.labels(model=model).inc(call.prompt_tokens)
        outcomes = [j.outcome for j in call.jobs if j.outcome is not None]
        for outcome in outcomes:
            m.completion_tokens.labels(model=model).inc(outcome.completion_tokens)
            m.generation.labels(model=model).observe(outcome.generation_s)
            if outcome.ttft_s is not None:
                m.ttft.labels(model=model).observe(outcome.ttft_s)
        duration = time.perf_counter() - call.t0
        if call.req.stream:
            m.request_duration.labels(route=call.route).observe(duration)
        first = outcomes[0] if outcomes else None
        reason = "error" if first is None else first.finish_reason
        if call.first_finish == "tool_calls":  # as the answer said
            reason = "tool_calls"
        if any(o.deadline for o in outcomes):  # answered "length"; the event says why
            reason = "deadline"
        self.rt.emit_inference(
            call.origin, endpoint=call.route, status=status, error_code=error_code,
            api=call.api,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=sum(o.completion_tokens for o in outcomes),
            ttft_s=min((o.ttft_s for o in outcomes if o.ttft_s is not None), default=None),
            duration_s=duration,
            generation_s=max((o.generation_s for o in outcomes), default=None),
            finish_reason=reason, cold_start=call.cold, stream=call.req.stream,
            output_format=call.req.output.kind, prompt=call.prompt_text,
            output=first.text if first else None)

    def _event(self, inbound: routes.Inbound, t0: float, *, status: int, error_code: str | None,
               stream: bool, req: schema.Request | None, api: str) -> None:
        self.rt.emit_inference(inbound.origin, endpoint=inbound.route, status=status,
                               error_code=error_code, api=api,
                               duration_s=time.perf_counter() - t0, finish_reason="error",
                               stream=stream,
                               output_format=req.output.kind if req is not None else "text")


def _json_response(answer: Model) -> routes.Result:
    """A 200 with ``answer`` as JSON."""
    return routes.Result(answer)


def _prompt_text(engine: Engine, req: schema.Request, tokens: list[int]) -> str:
    """The prompt as the event's text: a chat as `role: content` lines, a completion prompt as
    given (token ids detokenized)."""
    if req.messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in req.messages)
    if isinstance(req.prompt, str):
        return req.prompt
    return engine.llm.detokenize(tokens).decode("utf-8", errors="replace")

