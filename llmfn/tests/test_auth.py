"""Bearer auth: keys from API_KEYS and a key file, constant-time check, OpenAI-shaped 401."""
import hashlib
import os

import pytest
from flask import Response

from llmfn.auth import BearerAuth, KeyLimiter, key_id, load_keys
from llmfn.errors import ConcurrencyLimit, Unauthorized
from llmfn.metrics import HTTPMetrics
from llmfn.origin import current_origin
from llmfn.settings import ServerSettings, SettingsError, build
from llmfn.webapp import create_base_app


def test_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nfile-key\n\n")
    keys = load_keys(build(ServerSettings, {"API_KEYS": "a, b,", "API_KEYS_FILE": str(f)}))
    assert keys == (b"a", b"b", b"file-key")


def test_missing_key_file_names_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        load_keys(build(ServerSettings, {"API_KEYS_FILE": str(tmp_path / "nope")}))


def test_disabled_without_keys():
    auth = BearerAuth(())
    assert not auth.enabled
    auth.check(None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic a", "Bearer wrong",
                                    "Bearer a-but-longer"])
def test_rejects(header):
    with pytest.raises(Unauthorized) as err:
        BearerAuth((b"a", b"b")).check(header)
    assert err.value.status == 401
    assert err.value.body()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("header", ["Bearer a", "bearer b", "Bearer  b "])
def test_accepts(header):
    BearerAuth((b"a", b"b")).check(header)


# -- who is calling, key rotation, per-key concurrency -----------------------------------------


def test_key_id_is_a_hash_prefix_not_the_key():
    kid = key_id("sk-secret-key")
    assert kid == hashlib.sha256(b"sk-secret-key").hexdigest()[:12]
    assert len(kid) == 12 and "secret" not in kid
    assert BearerAuth((b"a", b"b")).check("Bearer b") == key_id(b"b")
    assert BearerAuth(()).check(None) is None


def _file_auth(tmp_path, text):
    f = tmp_path / "keys"
    f.write_text(text)
    return f, BearerAuth.from_settings(build(ServerSettings, {"API_KEYS": "env-key",
                                                              "API_KEYS_FILE": str(f)}))


def test_key_file_is_reread_when_it_changes(tmp_path):
    f, auth = _file_auth(tmp_path, "old-key\n")
    assert auth.check("Bearer old-key") == key_id("old-key")
    f.write_text("new-key-longer\n")
    assert auth.check("Bearer new-key-longer") == key_id("new-key-longer")
    with pytest.raises(Unauthorized):
        auth.check("Bearer old-key")
    assert auth.check("Bearer env-key") == key_id("env-key")  # API_KEYS stay


def test_key_file_swapped_like_a_kubernetes_secret_volume(tmp_path):
    """kubelet writes a new directory and swaps the ..data symlink: same size, new inode."""
    for name, key in (("v1", "key-aaaa"), ("v2", "key-bbbb")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "API_KEYS").write_text(key + "\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "API_KEYS").symlink_to("..data/API_KEYS")
    auth = BearerAuth.from_settings(build(ServerSettings,
                                          {"API_KEYS_FILE": str(tmp_path / "API_KEYS")}))
    assert auth.check("Bearer key-aaaa")
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert auth.check("Bearer key-bbbb") == key_id("key-bbbb")
    with pytest.raises(Unauthorized):
        auth.check("Bearer key-aaaa")


def test_unreadable_key_file_keeps_keys_and_emptied_file_keeps_auth_on(tmp_path):
    f, auth = _file_auth(tmp_path, "k-one\n")
    f.unlink()  # mid-swap: keep what we have
    assert auth.check("Bearer k-one") == key_id("k-one")
    f.write_text("")
    auth2 = BearerAuth.from_settings(build(ServerSettings, {"API_KEYS_FILE": str(f)}))
    assert not auth2.enabled  # no key at start: auth off, as before
    f.write_text("k-two\n")
    assert auth2.check("Bearer k-two") == key_id("k-two") and auth2.enabled
    f.write_text("# rotated away\n")
    with pytest.raises(Unauthorized):  # keys were in use: an empty file does not open up
        auth2.check("Bearer k-two")
    with pytest.raises(Unauthorized):
        auth2.check(None)


def test_key_limiter_counts_per_key():
    lim = KeyLimiter(2, retry_after_s=3)
    lim.acquire("a")
    lim.acquire("a")
    lim.acquire("b")
    with pytest.raises(ConcurrencyLimit) as err:
        lim.acquire("a")
    assert err.value.status == 429 and err.value.headers() == {"Retry-After": "3"}
    lim.release("a")
    lim.acquire("a")
    assert lim.in_flight("a") == 2 and lim.in_flight("b") == 1


class _Probes:
    def ready(self):
        return True, "ready"

    def alive(self):
        return True, "alive"


def test_app_limits_concurrent_requests_per_key_until_the_stream_ends():
    import threading
    release = threading.Event()
    limiter = KeyLimiter(1, retry_after_s=2)
    app = create_base_app("t", max_request_bytes=1024, probes=_Probes(), metrics=HTTPMetrics(),
                          auth=BearerAuth((b"k1", b"k2")), key_limiter=limiter)
    seen = []

    @app.get("/stream")
    def stream():
        seen.append(current_origin().key_id)

        def body():
            yield b"a"
            release.wait(10)
            yield b"b"
        return Response(body())

    c = app.test_client()
    k1 = {"Authorization": "Bearer k1"}
    first = c.get("/stream", headers=k1, buffered=False)
    assert first.status_code == 200 and limiter.in_flight(key_id("k1")) == 1
    over = c.get("/stream", headers=k1)
    assert over.status_code == 429 and over.headers["Retry-After"] == "2"
    assert over.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    other = c.get("/stream", headers={"Authorization": "Bearer k2"}, buffered=False)
    assert other.status_code == 200  # another key is not affected
    release.set()
    assert b"".join(first.response) == b"ab"
    first.close()
    other.close()
    assert limiter.in_flight(key_id("k1")) == 0 and limiter.in_flight(key_id("k2")) == 0
    again = c.get("/stream", headers=k1)
    assert again.status_code == 200
    assert seen == [key_id("k1"), key_id("k2"), key_id("k1")]
    assert c.get("/health/liveness").status_code == 200  # public routes: no key, no limit
