"""Exponential backoff with jitter: the one schedule of every retry loop in llmfn.

The weight fetch waiting for S3 (host), a range resumed mid-body (weights) and an event
redelivered to its sink (events) all wait ``first_s``, doubling up to ``max_s``, with "equal
jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): each wait is half the delay
plus a random share of the other half, so pods that failed together do not retry together, and
no wait is shorter than half the schedule's. (scripts/broker.py follows Knative's RetryConfig
instead, which has no jitter.)
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """The schedule: ``first_s`` doubling (``factor``) up to ``max_s``, each wait jittered
    (``first_s`` 0: no wait at all, as ``EVENTS_BACKOFF_S=0`` asks)."""
    first_s: float
    max_s: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.first_s <= self.max_s or self.factor < 1:
            raise ValueError(f"backoff needs 0 <= first_s <= max_s and factor >= 1, got {self}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The wait before each retry in turn, s: uniform in [delay/2, delay], the delay
        doubling from ``first_s`` to ``max_s``; endless (the caller bounds the retries)."""
        uniform = (rng or random).uniform
        delay = self.first_s
        while True:
            yield uniform(delay / 2, delay)
            delay = min(delay * self.factor, self.max_s)
