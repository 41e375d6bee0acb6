"""The audit Knative Function: stores inference CloudEvents exactly once and answers KPI queries.

``invoke: http`` (func.yaml): the shared adapter (``llmfn.function.LLMFunction``) hands every
request to the app, so a plain ``GET /kpis`` works under func-python as under gunicorn; the app
decodes CloudEvents itself (``llmfn.ce_http``). ``SPEC`` is its contract (``llmfn.contract``):
llmfn builds the runtime, ``new()`` and gunicorn's app (``wsgi.py``) from it.
"""
from __future__ import annotations

from collections.abc import Mapping

from llmfn import runtime
from llmfn.contract import FunctionSpec, Local, Page
from llmfn.events import INFERENCE_COMPLETED
from llmfn.function import LLMFunction
from llmfn.pages import STATIC

from . import api
from .service import AuditMetrics
from .settings import DEFAULTS, FUNCTION, AuditSettings

SPEC = FunctionSpec(
    name=FUNCTION,
    settings=AuditSettings.from_mapping,
    defaults=DEFAULTS,
    routes=api.register,
    accepts=(INFERENCE_COMPLETED,),
    page=Page("/dashboard", STATIC / "dashboard.html", "dashboard"),
    metrics=AuditMetrics,
    local=Local(port=8083, mongodb=True),
)


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    Its ``start(cfg)`` (before the server listens) connects to the database in the background;
    ``ready()`` turns True once the database answered.
    """
    return LLMFunction(SPEC)


def create_runtime(cfg: Mapping[str, str]) -> runtime.BaseRuntime:
    """The runtime from a config mapping (func's ``cfg`` or the environment); a SettingsError
    names a setting it cannot use (tests build their runtimes with it)."""
    return runtime.create_runtime(SPEC, cfg)
