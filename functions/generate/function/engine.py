"""The loaded model: weights, one llama.cpp context with a slot per stream, and the tokenizer.

The context holds ``SLOTS`` sequences in one unified KV cache of ``SLOTS x N_CTX`` cells, so
the scheduler (scheduler.py) decodes every stream's next token in one ``llama_decode``. Only
the scheduler's thread touches the context; tokenizing reads the vocabulary only and is safe
on request threads (as llama-server's HTTP threads do it).
"""
from __future__ import annotations

import ctypes
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp._logger import set_verbose
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmfn import sizing
from llmfn.cpu_share import FreeCpus
from llmfn.llama_backend import ensure_cpu_backend, model_file_errors
from llmfn.settings import ModelSettings, SettingsError

from .settings import GenerateSettings

if TYPE_CHECKING:  # types only: constraint imports llguidance, loaded once a schema needs it
    from llama_cpp.llama_types import ChatCompletionRequestMessage

    from .constraint import Compiler, Grammar

log = logging.getLogger(__name__)

# llama-server's sampling defaults, so both servers do the same work per token.
TOP_K = 40
MIN_P = 0.05


@dataclass
class Params:
    """Validated sampling parameters of one request (one choice)."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None  # what the output must match (structured, tools)
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's and the top k
    top_k: int = TOP_K  # 0: no top-k cut (the Messages API's top_k; chat keeps TOP_K)
    ignore_eos: bool = False  # end-of-generation tokens are never sampled (llama-server's)


def load_engine(path: str, model: ModelSettings, *, gen: GenerateSettings) -> Engine:
    """Load the GGUF at ``path`` and make its context (called on the ModelHost's loader
    thread). SLOTS and threads come from the model's shape and the container's limits unless
    set (``llmfn.sizing``); fails with the arithmetic when weights + KV exceed the memory
    limit, and logs it either way."""
    if gen.slots:
        _check_batch(model, gen.slots)
    ensure_cpu_backend()
    set_verbose(False)  # llama.cpp logs errors only (to stderr)
    params = internals.LlamaModel.default_params()
    with model_file_errors(path):
        llm = internals.LlamaModel(path_model=path, params=params, verbose=False)
    try:
        plan = sizing.plan(sizing.read_shape(path), n_ctx=model.n_ctx, slots=gen.slots,
                           threads=model.n_threads)
        log.info("sizing: %s", plan.explain())
        plan.check()
        _check_batch(model, plan.slots)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = plan.slots * model.n_ctx
        cp.n_batch = model.n_batch
        cp.n_ubatch = min(model.n_batch, model.n_ubatch)
        cp.n_seq_max = plan.slots
        cp.kv_unified = True  # one pool of cells: a long prompt may use what idle slots don't
        cp.n_threads = plan.threads
        cp.n_threads_batch = plan.threads
        cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if model.flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cp.no_perf = True
        ctx = internals.LlamaContext(model=llm, params=cp, verbose=False)
    except BaseException:
        llm.close()
        raise
    share = FreeCpus(plan.threads) if model.adaptive_threads and plan.threads > 1 else None
    if share is not None:
        log.info("threads: %s", share.explain())
    return Engine(llm, ctx, n_ctx=model.n_ctx, slots=plan.slots, n_batch=cp.n_batch, plan=plan,
                  cpu_share=share)


def _check_batch(model: ModelSettings, slots: int) -> None:
    if model.n_batch < slots:
        raise SettingsError(f"N_BATCH must be >= SLOTS ({slots}): every generating slot "
                            f"puts one token in each batch, got {model.n_batch}")


GreedyBias = tuple[np.ndarray, np.ndarray]  # token ids, the values added to their logits


def pick_greedy(row: np.ndarray, bias: GreedyBias) -> int:
    """The token llama.cpp's logit-bias + greedy sampler chain picks from a logits row: the
    first highest logit after adding ``bias``, without the chain's n_vocab candidate array
    (~360 us per token for a 152k vocabulary, against ~30 us here). Writes the bias into
    ``row``: pass the context's own row of the last decode, which the next decode replaces."""
    ids, add = bias
    if len(ids):
        row[ids] += add
    return int(row.argmax())


class Engine:
    """One loaded model: its context, the chat template from the GGUF, and the tokenizer."""

    def __init__(self, llm: internals.LlamaModel, ctx: internals.LlamaContext, *,
                 n_ctx: int, slots: int, n_batch: int, plan: sizing.Plan | None = None,
                 cpu_share: FreeCpus | None = None):
        self.llm = llm
        self.cpu_share = cpu_share.start() if cpu_share is not None else None
        self.threads = self.max_threads = ctx.params.n_threads  # last decode's, and the most
        self.sizing = plan  # how SLOTS and threads were chosen (readiness shows it)
        self.context = ctx
        self.ctx = ctx.ctx
        self.n_ctx = n_ctx  # per slot: prompt + completion of one request
        self.slots = slots
        self.n_batch = n_batch
        self.flash_attn = ctx.params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.n_vocab = llm.n_vocab()
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._piece = ctypes.create_string_buffer(64)
        eos, bos = llm.token_eos(), llm.token_bos()
        self.bos = bos
        eos_text = llm.token_get_text(eos) if eos != -1 else ""
        bos_text = llm.token_get_text(bos) if bos != -1 else ""
        template = llm.metadata().get("tokenizer.chat_template")
        self._chat = (Jinja2ChatFormatter(template=template, eos_token=eos_text,
                                          bos_token=bos_text) if template else None)
        self._compiler: Compiler | None = None
        self._compiler_lock = threading.Lock()
        self._eog: list[int] | None = None

    @property
    def compiler(self) -> Compiler:
        """The schema compiler of this vocabulary, built by the first
        structured request (about 1 s, not on the cold start's path); request threads."""
        with self._compiler_lock:
            if self._compiler is None:
                from . import constraint  # llguidance: only imported once a schema needs it
                self._compiler = constraint.Compiler(
                    constraint.tokenizer_from_vocab(self.vocab, self.eog_tokens))
            return self._compiler

    @property
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (listed on first use: ~50k calls)."""
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if self.is_eog(t)]
        return self._eog

    def set_threads(self, woken: bool = False) -> int:
        """The threads of the next decode: as many as CPUs are free now, when the policy is on
        (``llmfn.cpu_share``; ``woken``: the loop was idle a moment ago); scheduler thread."""
        if self.cpu_share is not None:
            n = self.cpu_share.woken() if woken else self.cpu_share.threads()
            if n != self.threads:
                llama_cpp.llama_set_n_threads(self.ctx, n, n)
                self.threads = n
        return self.threads

    def close(self) -> None:
        if self.cpu_share is not None:
            self.cpu_share.stop()
        if self._compiler is not None:
            self._compiler.close()
        self.context.close()
        self.llm.close()

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """Tokens of a plain completion prompt (BOS added as the model's vocab wants)."""
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def tokenize_chat(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """Tokens of the chat rendered with the GGUF's template, and the template's stop strings."""
        if self._chat is None:
            raise ValueError("model has no chat template")
        # validated OpenAI-shaped messages: the template reads them as plain dicts
        rendered = self._chat(messages=cast("list[ChatCompletionRequestMessage]", messages))
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stops = [s for s in (rendered.stop if isinstance(rendered.stop, list) else [rendered.stop])
                 if s]
        return tokens, stops

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (special tokens as empty text); scheduler thread."""
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0,
                                           False)
        if n < 0:  # longer than the buffer: -n is the size it needs
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, -n, 0, False)
        return self._piece.raw[:n]

    def logits(self, i_batch: int) -> np.ndarray:
        """A copy of the logits row ``i_batch`` of the last decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i_batch)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def logits_view(self, i_batch: int) -> np.ndarray:
        """The context's own logits row ``i_batch`` (writable: a mask set here is what the
        slot's sampler sees); scheduler thread."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i_batch)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def is_eog(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self.vocab, token)

    def greedy_bias(self, params: Params) -> GreedyBias | None:
        """The logit bias of a greedy request without penalties (``ignore_eos``: -inf on the
        end-of-generation tokens), for :func:`pick_greedy`; None when the request needs the
        sampler chain (:meth:`new_sampler`)."""
        if params.temperature > 0 or params.presence_penalty or params.frequency_penalty:
            return None
        bias = dict(params.logit_bias)
        if params.ignore_eos:
            bias.update(dict.fromkeys(self.eog_tokens, -math.inf))
        return (np.fromiter(bias, np.intp, len(bias)),
                np.fromiter(bias.values(), np.float32, len(bias)))

    def new_sampler(self, params: Params, seed: int):
        """A sampler chain for one slot, in llama-server's order: logit bias (and -inf on
        end-of-generation tokens with ``ignore_eos``) -> penalties,
        then greedy at temperature 0, else top_k -> top_p -> min_p -> temperature ->
        dist(seed). Free with ``llama_sampler_free``."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        bias = dict(params.logit_bias)
        if params.ignore_eos:  # as llama-server: -inf, whatever bias the request gave them
            bias.update(dict.fromkeys(self.eog_tokens, -math.inf))
        if bias:
            biases = (llama_cpp.llama_logit_bias * len(bias))(
                *(llama_cpp.llama_logit_bias(token, b) for token, b in bias.items()))
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases))
        if params.presence_penalty or params.frequency_penalty:
            # over everything generated (OpenAI's definition), not a window of the last tokens
            add(chain, llama_cpp.llama_sampler_init_penalties(
                self.n_vocab, params.max_tokens, 1.0, params.frequency_penalty,
                params.presence_penalty))
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain
