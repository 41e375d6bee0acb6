"""Optional bearer-token auth: `API_KEYS` and/or a key file from a mounted secret.

The key comes in ``Authorization: Bearer <key>`` or, if that header is absent, in
``x-api-key: <key>`` (Anthropic's clients send it there).

Keys are compared in constant time (hmac.compare_digest) against every configured key.

- Who is calling: :func:`key_id` names a key without revealing it (the first 12 hex digits of
  its sha256); a check answers the matching key's id, which the inference events carry as
  ``key_id``. The key itself is never logged, stored or sent.
- Rotation: ``API_KEYS_FILE`` is re-read when the file changes (its inode, size or mtime: a
  Kubernetes secret volume swaps a symlink, an editor rewrites the file), checked at every
  request, so a rotated secret takes effect without a restart. A file that cannot be read at
  that moment keeps the keys in use (logged); a file that turns empty after keys were in use
  does not switch auth off (every request gets 401 until keys are back).
- Per-key concurrency (:class:`KeyLimiter`, ``MAX_CONCURRENT_PER_KEY``): one key holds at most
  that many requests in flight; one more is answered 429 with ``Retry-After``.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path

from .errors import ConcurrencyLimit, Unauthorized
from .settings import ServerSettings, SettingsError

log = logging.getLogger(__name__)

KEY_ID_HEX = 12


def key_id(key: bytes | str) -> str:
    """A non-reversible id of a bearer key: the first 12 hex digits of its sha256."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def _parse(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def _clean(keys: list[str]) -> tuple[bytes, ...]:
    return tuple(k.encode() for k in keys if k and not k.startswith("#"))


def load_keys(server: ServerSettings) -> tuple[bytes, ...]:
    """All configured keys (comma-separated `API_KEYS` plus one per line of `API_KEYS_FILE`)."""
    keys = [k.strip() for k in server.api_keys.split(",")]
    if server.api_keys_file:
        try:
            text = Path(server.api_keys_file).read_text(encoding="utf-8")
        except OSError as err:
            raise SettingsError(f"API_KEYS_FILE cannot be read: {err.strerror}") from None
        keys += _parse(text)
    return _clean(keys)


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class BearerAuth:
    """Checks `Authorization: Bearer <key>`; disabled when no key is configured.

    Built from keys (fixed) or with :meth:`from_settings` (``API_KEYS_FILE`` re-read when it
    changes).
    """

    def __init__(self, keys: tuple[bytes, ...], *, env_keys: tuple[bytes, ...] = (),
                 key_file: str = ""):
        self._env_keys = env_keys
        self._file = key_file
        self._sig = _signature(key_file) if key_file else None
        self._lock = threading.Lock()
        self._set(keys)
        self._required = bool(keys)

    @classmethod
    def from_settings(cls, server: ServerSettings) -> BearerAuth:
        """Keys of `API_KEYS` and `API_KEYS_FILE` (SettingsError if the file is unreadable)."""
        env_keys = _clean([k.strip() for k in server.api_keys.split(",")])
        return cls(load_keys(server), env_keys=env_keys, key_file=server.api_keys_file)

    def _set(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys
        self._ids = tuple(key_id(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self._required

    def reload_if_changed(self) -> bool:
        """Re-read ``API_KEYS_FILE`` if it changed since the last read; True if keys changed."""
        if not self._file:
            return False
        sig = _signature(self._file)
        if sig == self._sig:
            return False
        with self._lock:
            if sig == self._sig:
                return False
            try:
                text = Path(self._file).read_text(encoding="utf-8")
            except OSError as err:  # mid-swap or removed: keep the keys in use, try again later
                log.warning("API_KEYS_FILE cannot be read (%s); keeping the %d key(s) in use",
                            err.strerror, len(self.keys))
                self._sig = sig
                return False
            self._sig = sig
            keys = self._env_keys + _clean(_parse(text))
            if keys == self.keys:
                return False
            self._set(keys)
            self._required = self._required or bool(keys)
        log.info("API_KEYS_FILE changed: %d key(s) now (ids %s)", len(keys),
                 ", ".join(self._ids) or "none")
        if not keys and self._required:
            log.warning("API_KEYS_FILE has no keys: every request gets 401 until it has some")
        return True

    def check(self, authorization: str | None, api_key: str | None = None) -> str | None:
        """Raise Unauthorized unless the ``Authorization: Bearer`` header, or else the
        ``x-api-key`` header (``api_key``, as Anthropic's clients send the key), carries one of
        the keys; the matching key's :func:`key_id` (None when auth is disabled)."""
        self.reload_if_changed()
        keys, ids = self.keys, self._ids
        if not keys and not self._required:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if authorization is None and api_key and api_key.strip():
            scheme, token = "bearer", api_key
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <API key>' "
                               "(or 'x-api-key: <API key>').")
        given = token.strip().encode()
        found = None
        for key, kid in zip(keys, ids):  # no early exit: time does not depend on which matched
            if hmac.compare_digest(given, key):
                found = kid
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found


class KeyLimiter:
    """At most ``limit`` requests in flight per key id (0 = no limit)."""

    def __init__(self, limit: int, retry_after_s: int = 2):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, kid: str) -> None:
        """Count one more request of ``kid``; ConcurrencyLimit (429) when it has ``limit``."""
        with self._lock:
            n = self._in_flight.get(kid, 0)
            if n >= self.limit:
                raise ConcurrencyLimit(
                    f"Too many concurrent requests for this API key (limit {self.limit}). "
                    "Retry when one has finished.", retry_after_s=self.retry_after_s)
            self._in_flight[kid] = n + 1

    def release(self, kid: str) -> None:
        with self._lock:
            n = self._in_flight.get(kid, 0) - 1
            if n > 0:
                self._in_flight[kid] = n
            else:
                self._in_flight.pop(kid, None)

    def in_flight(self, kid: str) -> int:
        with self._lock:
            return self._in_flight.get(kid, 0)
