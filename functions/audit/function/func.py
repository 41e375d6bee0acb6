"""The audit Knative Function: stores inference CloudEvents exactly once and answers KPI queries.

``invoke: http`` (func.yaml): the shared adapter (``llmfn.function.LLMFunction``) hands every
request to the app, so a plain ``GET /kpis`` works under func-python as under gunicorn; the app
decodes CloudEvents itself (``llmfn.ce_http``).
"""
from __future__ import annotations

from typing import Mapping

from llmfn.function import LLMFunction
from llmfn.runtime import BaseRuntime
from llmfn.settings import ServerSettings, build

from . import api
from .service import AuditMetrics, AuditService
from .settings import DEFAULTS, FUNCTION, AuditSettings


class AuditRuntime(BaseRuntime):
    """The audit process: the base app with audit's routes over one AuditService."""

    def __init__(self, settings: AuditSettings, server: ServerSettings, *,
                 service: AuditService | None = None):
        metrics = service.metrics if service is not None else AuditMetrics()
        super().__init__(server.function or FUNCTION, server, metrics)
        self.settings = settings
        self.service = service or AuditService(settings, retry_after_s=server.retry_after_s,
                                               metrics=metrics)
        api.register(self.app, self.service)

    @property
    def capacity(self) -> int:
        """Deliveries wait for their commit, which groups up to INGEST_MAX_BATCH events."""
        return self.settings.max_batch

    def start(self) -> None:
        """Connect to the database and create indexes in the background."""
        self.service.start()

    def _ready(self) -> tuple[bool, str]:
        return self.service.ready()

    def alive(self) -> tuple[bool, str]:
        return self.service.alive()

    def _stop(self, grace_s: float) -> None:
        """Let the events being recorded get their commit (new ones get 503 meanwhile), then
        finish queued commits and close the database client."""
        self.wait_requests(grace_s)
        self.service.stop(grace_s)


def create_runtime(cfg: Mapping[str, str]) -> AuditRuntime:
    """Build the process's runtime from a config mapping (func's ``cfg`` or the environment)."""
    merged = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    return AuditRuntime(AuditSettings.from_mapping(merged), build(ServerSettings, merged))


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    Its ``start(cfg)`` (before the server listens) connects to the database in the background;
    ``ready()`` turns True once the database answered.
    """
    return LLMFunction(create_runtime, FUNCTION)
