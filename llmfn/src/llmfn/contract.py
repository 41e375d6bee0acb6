"""A function's contract: the one object a function declares and llmfn reads.

Each function's ``function/func.py`` exports ``SPEC``, a :class:`FunctionSpec`: its name, its own
settings class, its model loader (or none), how it adds its API (``routes``, returning the
:class:`Worker` that owns its work: capacity and drain), the request events it serves, its page
and how ``make run`` serves it on this machine. Everything else comes from llmfn, built from that
object: the runtime (``llmfn.runtime.build_runtime``), func-python's ``new()``
(``llmfn.function.LLMFunction(SPEC)``), gunicorn's app (``llmfn.runtime.wsgi_app(SPEC)``), the
request events' route (``llmfn.event_requests``) and the pages (``llmfn.pages``). llmfn names no
function; ``scripts/run.py``, the manifest tests and the pages find the functions with
:func:`discover`.

This module only declares (no Flask, no model code): a function's package imports it before
anything heavy.
"""
from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import with_defaults

if TYPE_CHECKING:
    from flask import Flask

    from .host import Loader
    from .metrics import HTTPMetrics

SPEC_MODULE = "func"
"""The module of a function's package that exports its contract as ``SPEC``."""


class Worker:
    """What owns a function's work (a model loop, a database writer): returned by its routes.

    The runtime calls each hook at a fixed point of the process's life; the defaults suit a
    function whose requests need nothing beyond the request thread."""

    capacity: int = 1
    """Requests that run at once (the rest wait in a queue of ``QUEUE_SIZE``): sizes
    func-python's bridge threads."""

    def start(self) -> None:
        """Called once after fork, when the process starts serving: begin background work."""

    def ready(self) -> tuple[bool, str]:
        """Called by the readiness probe (after the model's own readiness, if any)."""
        return True, "ready"

    def alive(self) -> tuple[bool, str]:
        """Called by the liveness probe: False only when the process cannot recover."""
        return True, "alive"

    def drain(self, grace_s: float) -> bool:
        """Called once on stop, after the admitted requests were waited for: finish the work
        within ``grace_s`` (what is left of SHUTDOWN_GRACE_S), then abort the rest and release
        what is held. True when everything finished in time."""
        return True


Routes = Callable[["Flask", Any, Any], Worker]
"""``routes(app, runtime, settings)``: add the function's API to the base ``app`` of its
``runtime`` (an ``llmfn.runtime.BaseRuntime``; ``llmfn.model_runtime.Runtime`` for a function
with a model), and return its worker. API routes go in with :func:`llmfn.routes.add`: request
events call the same handlers. ``settings`` is the function's own
(:attr:`FunctionSpec.settings`)."""

ModelLoader = Callable[[Mapping[str, str]], "Loader"]
"""``loader(cfg)``: the model loader (``path, model settings -> model``) ``cfg`` calls for."""


@dataclass(frozen=True)
class RequestEvent:
    """A request event type served on ``POST /`` (docs/events.md): the API route whose handler
    answers it and the reply's type."""
    route: str
    reply: str
    seeded: bool = False
    """Sampling: a seed derived from the event when the request gives none (redeliveries
    answer the same)."""


@dataclass(frozen=True)
class Page:
    """The function's HTML page, served without a bearer key at ``rule`` (``GET``)."""
    rule: str
    file: Path
    """An HTML file: one of llmfn's (``llmfn.pages.STATIC``) or of the function's folder. It
    may load llmfn's ``/static/`` files."""
    endpoint: str = "page"


@dataclass(frozen=True)
class Local:
    """How ``make run`` (scripts/run.py) serves the function on this machine."""
    port: int
    """Default port; ``<NAME>_PORT`` overrides it."""
    model: str | None = None
    """S3 key of the model ``make run`` uploads to its MinIO for it (its MODEL_URI)."""
    mongodb: bool = False
    """Gets ``MONGODB_URI`` of the local FerretDB."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function, as llmfn plugs it in. See the module's docstring and
    docs/architecture.md "A function's contract"."""
    name: str
    routes: Routes
    settings: Callable[[Mapping[str, str]], Any] | None = None
    """Builds the function's own settings from the config mapping (its defaults merged in):
    its settings class's ``from_mapping``."""
    defaults: Mapping[str, str] = field(default_factory=dict)
    """The function's defaults of shared settings (``N_CTX``, ``QUEUE_SIZE``); the config
    mapping (func's ``cfg`` or the environment) overrides them."""
    model: ModelLoader | None = None
    """None: a function without a model (no weights, no /v1/models, no inference events)."""
    events: Mapping[str, RequestEvent] = field(default_factory=dict)
    """Request event types it serves on ``POST /``, by ``type``."""
    accepts: tuple[str, ...] = ()
    """Other event types its ``POST /`` takes (audit: the inference event), for the Triggers."""
    page: Page | None = None
    metrics: Callable[[], HTTPMetrics] | None = None
    """Its metrics' class when it has more than llmfn's (default: llmfn's, model metrics
    included for a model function)."""
    local: Local | None = None

    def config(self, cfg: Mapping[str, str]) -> dict[str, str]:
        """``cfg`` over the function's defaults (and ``FUNCTION_NAME``), unset values dropped."""
        return with_defaults(cfg, {"FUNCTION_NAME": self.name, **self.defaults})

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type its ``POST /`` takes."""
        return frozenset({*self.events, *self.accepts})


def function_dirs(root: Path) -> list[Path]:
    """The function folders under ``root/functions`` (those with a ``func.yaml``), by name."""
    return sorted(p.parent for p in (root / "functions").glob("*/func.yaml")
                  if (p.parent / "function" / f"{SPEC_MODULE}.py").is_file())


def discover(root: Path) -> dict[str, FunctionSpec]:
    """The contract of every function under ``root/functions``, by name.

    Each function's package is loaded under a name of its own (every folder calls it
    ``function``), without running its ``__init__``: that starts the weight download
    (``function/early.py``), which discovery must not do."""
    specs: dict[str, FunctionSpec] = {}
    for folder in function_dirs(root):
        spec = load_spec(folder)
        if spec.name in specs:
            raise ValueError(f"{folder}: a second function named {spec.name!r}")
        specs[spec.name] = spec
    return specs


def load_spec(folder: Path) -> FunctionSpec:
    """``SPEC`` of the function in ``folder`` (its ``function/func.py``)."""
    package = "llmfn_discovered_" + "".join(c if c.isalnum() else "_" for c in
                                            str(folder.resolve()))
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(folder / "function")]
        module.__package__ = package
        sys.modules[package] = module
    spec = getattr(importlib.import_module(f"{package}.{SPEC_MODULE}"), "SPEC", None)
    if not isinstance(spec, FunctionSpec):
        raise TypeError(f"{folder}/function/{SPEC_MODULE}.py has no SPEC (a FunctionSpec)")
    return spec
