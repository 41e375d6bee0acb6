"""Optional bearer-token auth: `API_KEYS` and/or a key file from a mounted secret.

Keys are compared in constant time (hmac.compare_digest) against every configured key.
"""
from __future__ import annotations

import hmac
from pathlib import Path

from .errors import Unauthorized
from .settings import ServerSettings, SettingsError


def load_keys(server: ServerSettings) -> tuple[bytes, ...]:
    """All configured keys (comma-separated `API_KEYS` plus one per line of `API_KEYS_FILE`)."""
    keys = [k.strip() for k in server.api_keys.split(",")]
    if server.api_keys_file:
        try:
            text = Path(server.api_keys_file).read_text(encoding="utf-8")
        except OSError as err:
            raise SettingsError(f"API_KEYS_FILE cannot be read: {err.strerror}") from None
        keys += [line.strip() for line in text.splitlines()]
    return tuple(k.encode() for k in keys if k and not k.startswith("#"))


class BearerAuth:
    """Checks `Authorization: Bearer <key>`; disabled when no key is configured."""

    def __init__(self, keys: tuple[bytes, ...]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthorized unless the header carries one of the keys."""
        if not self.keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <API key>'.")
        given = token.strip().encode()
        ok = False
        for key in self.keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Unauthorized("Incorrect API key provided.")
