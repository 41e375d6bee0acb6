"""Typed, frozen settings built once from a mapping (the func `cfg` dict or the environment).

Only this module reads ``os.environ`` (see :func:`environ_copy`). Every field has a default,
bounds where they make sense and a one-line description with its unit. Parsing is strict and
errors name the key, e.g. ``N_THREADS must be >= 1``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


FUNC_TEMPLATE = re.compile(r"\{\{\s*(secret|env|configMap)\s*:[^}]*\}\}")
"""func.yaml's value templates (``{{ secret:NAME:KEY }}``, ``{{ env:NAME }}``, ...): `func deploy`
resolves them from the cluster, a host run (`func run --builder=host`) passes them as text."""


def check_templates(env: Mapping[str, str]) -> None:
    """Raise naming every variable that still holds a func.yaml template: a value nobody
    resolved, which would otherwise reach a client library as text (a MongoDB URI, a key)."""
    found = sorted(k for k, v in env.items() if isinstance(v, str) and FUNC_TEMPLATE.search(v))
    if found:
        # the template only, never the value around it (a URI may hold a password)
        shown = ", ".join(f"{k} holds {m.group(0)!r}" for k in found
                          if (m := FUNC_TEMPLATE.search(env[k])))
        raise SettingsError(
            f"{', '.join(found)} {'is an' if len(found) == 1 else 'are'} unresolved func.yaml "
            f"template{'s' if len(found) > 1 else ''} ({shown}): only `func deploy` resolves "
            "these; in a host run (`func run --builder=host`) give the value with "
            f"-e {found[0]}=...")


def check_url(key: str, value: str, schemes: tuple[str, ...] = ("http", "https")) -> None:
    """Raise unless ``value`` is empty or an absolute URL with one of ``schemes`` and a host."""
    if not value:
        return
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as err:
        raise SettingsError(f"{key} is not a URL ({err}), got {value!r}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError(f"{key} must be a {' or '.join(f'{s}://' for s in schemes)} URL "
                            f"with a host, got {value!r}")


def setting(key: str, default: Any, doc: str, *, lo: float | None = None,
            hi: float | None = None, secret: bool = False) -> Any:
    """Declare a settings field read from ``key`` with a default, bounds and a description."""
    return field(default=default, metadata={"key": key, "doc": doc, "lo": lo, "hi": hi,
                                            "secret": secret})


def _parse(key: str, raw: str, kind: type, lo, hi):
    raw = raw.strip()
    value: int | float
    try:
        if kind is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            return raw
    except ValueError:
        raise SettingsError(f"{key} must be {kind.__name__}, got {raw!r}") from None
    if lo is not None and value < lo:
        raise SettingsError(f"{key} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise SettingsError(f"{key} must be <= {hi}, got {value}")
    return value


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def with_defaults(env: Mapping[str, str | None] | None,
                  defaults: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` over ``defaults`` (a function's own): the mapping its settings are built from.
    ``env`` is func's ``cfg``, where a key set to None is unset, or None for the process
    environment; a None value never hides a default."""
    source = os.environ if env is None else env
    return {**(defaults or {}), **{k: v for k, v in source.items() if v is not None}}


def build(cls, env: Mapping[str, str]):
    """Build the frozen settings dataclass ``cls`` from ``env`` (unknown keys are ignored, and
    so is a key set to None)."""
    values = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key")
        if key is None or key not in env or env[key] is None:
            continue
        kind = _KINDS.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        values[f.name] = _parse(key, str(env[key]), kind, f.metadata["lo"], f.metadata["hi"])
    return cls(**values)


def describe(cls) -> list[tuple[str, Any, str]]:
    """(key, default, description) for every field: docs/configuration.md's table."""
    return [(f.metadata["key"], f.default, f.metadata["doc"])
            for f in dataclasses.fields(cls) if "key" in f.metadata]


@dataclass(frozen=True)
class StorageSettings:
    """Where the GGUF weights come from and how they are fetched at cold start."""
    model_uri: str = setting("MODEL_URI", "", "s3://bucket/key or file:///path of the GGUF weights")
    model_sha256: str = setting("MODEL_SHA256", "", "expected sha256 (hex); else the object's "
                                "`sha256` metadata is used")
    cache_dir: str = setting("MODEL_CACHE_DIR", "/tmp/llmfn-models",
                             "directory the weights are downloaded to (emptyDir in the cluster)")
    s3_endpoint_url: str = setting("S3_ENDPOINT_URL", "", "S3 endpoint (MinIO); empty = AWS")
    s3_region: str = setting("AWS_REGION", "us-east-1", "S3 region name")
    s3_max_concurrency: int = setting("S3_MAX_CONCURRENCY", 8, "parallel ranged GETs", lo=1, hi=64)
    s3_chunk_bytes: int = setting("S3_CHUNK_BYTES", 8 * 1024 * 1024,
                                  "size of one ranged GET in bytes", lo=5 * 1024 * 1024)
    s3_connect_timeout_s: float = setting("S3_CONNECT_TIMEOUT_S", 5.0, "S3 connect timeout, s",
                                          lo=0.1)
    s3_read_timeout_s: float = setting("S3_READ_TIMEOUT_S", 30.0, "S3 read timeout, s", lo=0.1)
    s3_max_attempts: int = setting("S3_MAX_ATTEMPTS", 5, "boto3 `standard` retry attempts",
                                   lo=1, hi=20)
    verify_attempts: int = setting("MODEL_VERIFY_ATTEMPTS", 3,
                                   "downloads tried before a checksum mismatch is final",
                                   lo=1, hi=10)

    def __post_init__(self):
        check_url("S3_ENDPOINT_URL", self.s3_endpoint_url)


@dataclass(frozen=True)
class ModelSettings:
    """How llama.cpp loads and runs the model."""
    name: str = setting("MODEL_NAME", "", "model id served in /v1/models (default: file stem)")
    n_ctx: int = setting("N_CTX", 2048, "context length of one request (generate: per slot), "
                         "tokens", lo=16)
    n_threads: int = setting("N_THREADS", 0, "llama.cpp threads; 0 = the container's CPU "
                             "limit rounded up (cgroup), else the CPUs it may run on "
                             "(generate; embed: llama.cpp's default)", lo=0, hi=256)
    adaptive_threads: bool = setting("ADAPTIVE_THREADS", True, "generate: each decode step "
                                     "uses as many of the N_THREADS threads as CPUs are free "
                                     "now (docs/deploy.md \"Threads and CPU\"); 0 = always "
                                     "N_THREADS")
    n_batch: int = setting("N_BATCH", 512, "prompt batch size in tokens", lo=1)
    n_ubatch: int = setting("N_UBATCH", 512, "physical micro-batch size in tokens", lo=1)
    default_max_tokens: int = setting("DEFAULT_MAX_TOKENS", 256,
                                      "max_tokens when a request gives none", lo=1)
    flash_attn: bool = setting("FLASH_ATTN", True, "llama.cpp flash attention: batched and "
                               "token-by-token prompts give the same logits, at no cost "
                               "(docs/benchmarks.md \"Kernel-path noise\")")


@dataclass(frozen=True)
class ServerSettings:
    """HTTP limits, queueing, auth and shutdown behaviour."""
    function: str = setting("FUNCTION_NAME", "", "function name reported in events (default: "
                            "the function's own, e.g. generate)")
    max_request_bytes: int = setting("MAX_REQUEST_BYTES", 1024 * 1024,
                                     "largest accepted request body, bytes", lo=1)
    queue_size: int = setting("QUEUE_SIZE", 4, "requests waiting for the model beyond the "
                              "running ones (generate: SLOTS); more get 429", lo=0, hi=10000)
    retry_after_s: int = setting("RETRY_AFTER_S", 2, "Retry-After sent with 429 and 503, s",
                                 lo=0)
    heartbeat_s: float = setting("SSE_HEARTBEAT_S", 5.0,
                                 "SSE comment interval while the prompt is processed, s", lo=0.05)
    grace_s: float = setting("SHUTDOWN_GRACE_S", 25.0,
                             "time in-flight streams get to finish on stop, s", lo=0)
    min_stop_s: float = setting("SHUTDOWN_MIN_S", 1.0,
                                "after SIGTERM the port stays open at least this long (readiness "
                                "503, new requests 503 + Retry-After) so a router polling "
                                "readiness stops sending first, s", lo=0, hi=300)
    api_keys: str = setting("API_KEYS", "", "comma-separated bearer keys; empty = no auth",
                            secret=True)
    api_keys_file: str = setting("API_KEYS_FILE", "",
                                 "file with one key per line (a mounted secret); re-read when "
                                 "it changes, no restart")
    max_concurrent_per_key: int = setting("MAX_CONCURRENT_PER_KEY", 0,
                                          "requests one API key may have in flight; one more "
                                          "gets 429 + Retry-After; 0 = no limit", lo=0)
    log_level: str = setting("LOG_LEVEL", "info", "log level (llmfn's and gunicorn's)")


@dataclass(frozen=True)
class EventSettings:
    """Where and how inference CloudEvents are sent."""
    sink: str = setting("K_SINK", "", "CloudEvents sink URL (SinkBinding); empty = no events")
    ce_overrides: str = setting("K_CE_OVERRIDES", "",
                                'JSON {"extensions": {...}} added to every event')
    service: str = setting("K_SERVICE", "", "Knative service name (set by Knative)")
    revision: str = setting("K_REVISION", "", "Knative revision name (set by Knative)")
    queue_size: int = setting("EVENTS_QUEUE_SIZE", 1000, "events buffered before dropping",
                              lo=1)
    max_attempts: int = setting("EVENTS_MAX_ATTEMPTS", 5, "delivery attempts per event",
                                lo=1, hi=50)
    backoff_s: float = setting("EVENTS_BACKOFF_S", 0.2, "first retry delay (doubles), s",
                               lo=0)
    timeout_s: float = setting("EVENTS_TIMEOUT_S", 5.0, "HTTP timeout per delivery, s", lo=0.1)
    flush_s: float = setting("EVENTS_FLUSH_S", 5.0, "deadline to flush events on stop, s", lo=0)
    include_text: bool = setting("EVENTS_INCLUDE_TEXT", False,
                                 "put prompt and output text in events (opt-in)")
    correlation_attribute: str = setting("REPLY_CORRELATION_ATTRIBUTE", "correlationid",
                                         "request-event attribute whose value a reply carries "
                                         "back (RequestReply's spec.correlationAttribute)")
    reply_attribute: str = setting("REPLY_ID_ATTRIBUTE", "replyid",
                                   "reply-event attribute that carries it "
                                   "(RequestReply's spec.replyAttribute)")


@dataclass(frozen=True)
class GunicornSettings:
    """How the gunicorn path (`make run`, Containerfile) serves the Flask app (its graceful
    timeout and log level come from ServerSettings)."""
    bind: str = setting("BIND", "", "host:port to listen on; empty = 0.0.0.0:$PORT")
    port: int = setting("PORT", 8080, "port when BIND is empty (Knative sets PORT)", lo=1,
                        hi=65535)
    threads: int = setting("GUNICORN_THREADS", 16, "gthread threads: one per running and "
                           "waiting request (SLOTS + QUEUE_SIZE) plus health and metrics",
                           lo=2, hi=256)


@dataclass(frozen=True)
class Settings:
    """All settings of one function process."""
    storage: StorageSettings
    model: ModelSettings
    server: ServerSettings
    events: EventSettings

    @classmethod
    def from_mapping(cls, env: Mapping[str, str], **defaults: str) -> Settings:
        """Build from ``env``; ``defaults`` fill keys that ``env`` lacks (a function's own)."""
        merged = with_defaults(env, defaults)
        return cls(storage=build(StorageSettings, merged), model=build(ModelSettings, merged),
                   server=build(ServerSettings, merged), events=build(EventSettings, merged))

    def require_model(self) -> None:
        """Raise if the settings cannot load a model (checked when loading starts)."""
        if not self.storage.model_uri:
            raise SettingsError("MODEL_URI is missing")
        if not self.storage.model_uri.startswith(("s3://", "file://")):
            raise SettingsError("MODEL_URI must start with s3:// or file://")


def environ_copy() -> dict[str, str]:
    """A copy of the process environment, for components that take a mapping."""
    return dict(os.environ)
