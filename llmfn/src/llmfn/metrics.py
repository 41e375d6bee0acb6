"""Prometheus metrics of one function process, on a registry owned by the app (not the global one).

Names follow Prometheus conventions (base units: seconds, `_total` counters).
"""
from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Buckets for CPU inference: from a few ms (tiny models, cached prefixes) to minutes (long streams).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COLD_START_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class HTTPMetrics:
    """Requests by route and status, and their durations: what every function counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter("llmfn_requests_total", "HTTP requests by route and status "
                                "(route `bridge`: answered before the app, e.g. 413, shutdown)",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram("llmfn_request_duration_seconds",
                                          "request start to last byte", ["route"],
                                          buckets=LATENCY_BUCKETS_S, registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Metrics(HTTPMetrics):
    """Token, latency, queue and cold-start metrics of a model function, besides the requests."""

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        r = self.registry
        self.prompt_tokens = Counter("llmfn_prompt_tokens_total", "prompt tokens processed",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("llmfn_completion_tokens_total",
                                         "tokens generated (counted as produced)", ["model"],
                                         registry=r)
        self.ttft = Histogram("llmfn_time_to_first_token_seconds",
                              "request start to first generated token", ["model"],
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.generation = Histogram("llmfn_generation_seconds",
                                    "time spent running the model for one request", ["model"],
                                    buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("llmfn_queue_depth", "requests waiting for the model",
                                 registry=r)
        self.in_flight = Gauge("llmfn_in_flight", "requests being run by the model", registry=r)
        self.cold_start = Gauge("llmfn_cold_start_seconds",
                                "cold-start time by phase (download, verify, load)", ["phase"],
                                registry=r)
        self.model_ready = Gauge("llmfn_model_ready", "1 once the model is loaded", registry=r)
