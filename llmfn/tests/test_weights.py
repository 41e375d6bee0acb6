"""llmfn.weights against a real MinIO: download, verify, cache, lock, failures, file:// URIs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmfn import settings, weights
from llmfn.weights import FetchResult, WeightsError
from scripts import upload_model

CHUNK = 5 * 1024 * 1024  # the smallest S3 part size


def storage(cache_dir, uri: str, **extra: str) -> settings.StorageSettings:
    """StorageSettings as the function builds them, with small parts so downloads are ranged."""
    env = {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(cache_dir), "S3_CHUNK_BYTES": str(CHUNK),
           "S3_MAX_CONCURRENCY": "4", "S3_MAX_ATTEMPTS": "2", **extra}
    return settings.build(settings.StorageSettings, env)


def count_gets(client) -> list[str]:
    """Record every GetObject request ``client`` sends (a botocore event hook on the real
    client); returns the list the hook appends the Range header to."""
    calls: list[str] = []
    client.meta.events.register(
        "before-call.s3.GetObject",
        lambda params, **kw: calls.append(params.get("headers", {}).get("Range", "")))
    return calls


@pytest.fixture(scope="session")
def payload() -> bytes:
    """12 MiB of seeded bytes: three 5 MiB ranges."""
    import random
    return random.Random(1234).randbytes(12 * 1024 * 1024)


@pytest.fixture
def model_file(tmp_path, payload) -> Path:
    path = tmp_path / "src" / "model.gguf"
    path.parent.mkdir()
    path.write_bytes(payload)
    return path


@pytest.fixture
def uploaded(s3, bucket, model_file) -> tuple[str, str]:
    """(s3 uri, sha256) of the payload uploaded with sha256 metadata."""
    digest = upload_model.upload(s3, str(model_file), bucket, "m/model.gguf")
    return f"s3://{bucket}/m/model.gguf", digest


def leftovers(cache_dir: Path) -> list[str]:
    """Files in the cache besides lock files."""
    return sorted(p.name for p in cache_dir.rglob("*") if p.is_file()
                  and not p.name.endswith(".lock"))


def test_download_verifies_with_object_metadata(tmp_path, s3, uploaded, payload):
    uri, digest = uploaded
    gets = count_gets(s3)
    seen: list[tuple[int, int]] = []
    result = weights.fetch(storage(tmp_path / "cache", uri), s3_client=s3,
                           progress=lambda done, total: seen.append((done, total)))
    assert isinstance(result, FetchResult)
    assert result.sha256 == digest == hashlib.sha256(payload).hexdigest()
    assert result.size_bytes == len(payload)
    assert (result.cached, result.attempts) == (False, 1)
    assert result.download_s > 0 and result.verify_s > 0
    path = Path(result.path)
    assert path == tmp_path / "cache" / uri[5:]
    assert path.read_bytes() == payload
    assert len(gets) == 3 and all(r.startswith("bytes=") for r in gets)  # parallel ranged GETs
    assert seen[-1] == (len(payload), len(payload))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert leftovers(tmp_path / "cache") == ["model.gguf", "model.gguf.sha256"]


def test_model_sha256_setting_wins(tmp_path, s3, uploaded):
    uri, digest = uploaded
    result = weights.fetch(storage(tmp_path, uri, MODEL_SHA256=digest.upper()), s3_client=s3)
    assert result.sha256 == digest


def test_cached_file_is_reused_without_get(tmp_path, s3, uploaded):
    uri, digest = uploaded
    gets = count_gets(s3)
    st = storage(tmp_path, uri)
    first = weights.fetch(st, s3_client=s3)
    mtime = os.stat(first.path).st_mtime_ns
    n_gets = len(gets)

    second = weights.fetch(st, s3_client=s3)
    assert second.cached and second.sha256 == digest and second.path == first.path
    assert (second.download_s, second.verify_s, second.attempts) == (0.0, 0.0, 0)
    assert len(gets) == n_gets
    assert os.stat(second.path).st_mtime_ns == mtime


def test_cached_file_without_sidecar_is_rehashed_and_reused(tmp_path, s3, uploaded):
    uri, digest = uploaded
    gets = count_gets(s3)
    st = storage(tmp_path, uri)
    first = weights.fetch(st, s3_client=s3)
    os.unlink(first.path + ".sha256")
    n_gets = len(gets)
    again = weights.fetch(st, s3_client=s3)
    assert again.cached and again.sha256 == digest and again.verify_s > 0
    assert len(gets) == n_gets
    assert Path(first.path + ".sha256").exists()


def test_corrupted_cache_is_downloaded_again(tmp_path, s3, uploaded, payload):
    uri, digest = uploaded
    st = storage(tmp_path, uri)
    path = Path(weights.fetch(st, s3_client=s3).path)
    with open(path, "r+b") as f:  # same size, one byte flipped
        f.seek(100)
        f.write(bytes([payload[100] ^ 0xFF]))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    gets = count_gets(s3)
    result = weights.fetch(st, s3_client=s3)
    assert not result.cached and result.sha256 == digest and len(gets) == 3
    assert path.read_bytes() == payload


def test_wrong_model_sha256_fails_after_attempts_and_leaves_no_file(tmp_path, s3, uploaded):
    uri, _ = uploaded
    gets = count_gets(s3)
    st = storage(tmp_path / "cache", uri, MODEL_SHA256="0" * 64, MODEL_VERIFY_ATTEMPTS="2")
    with pytest.raises(WeightsError, match=r"sha256 mismatch: expected 0{64}, got .* after 2 "
                                           r"attempts"):
        weights.fetch(st, s3_client=s3)
    assert len(gets) == 2 * 3
    assert leftovers(tmp_path / "cache") == []


def test_truncated_object_is_rejected(tmp_path, s3, bucket, payload):
    short = tmp_path / "short.gguf"
    short.write_bytes(payload[: len(payload) // 2])
    # The metadata describes the full file; the body is its first half.
    upload_model.upload(s3, str(short), bucket, "short.gguf",
                        sha256=hashlib.sha256(payload).hexdigest())
    st = storage(tmp_path / "cache", f"s3://{bucket}/short.gguf", MODEL_VERIFY_ATTEMPTS="1")
    with pytest.raises(WeightsError, match="sha256 mismatch.*after 1 attempts"):
        weights.fetch(st, s3_client=s3)
    assert leftovers(tmp_path / "cache") == []


def test_object_without_checksum_is_hashed_and_recorded(tmp_path, s3, bucket, payload, caplog):
    s3.put_object(Bucket=bucket, Key="plain.gguf", Body=payload[:1000])
    st = storage(tmp_path, f"s3://{bucket}/plain.gguf")
    with caplog.at_level(logging.WARNING, logger="llmfn.weights"):
        result = weights.fetch(st, s3_client=s3)
    assert result.sha256 == hashlib.sha256(payload[:1000]).hexdigest()
    assert "no sha256 to verify against" in caplog.text
    side = json.loads(Path(result.path + ".sha256").read_text())
    assert side["sha256"] == result.sha256
    gets = count_gets(s3)
    assert weights.fetch(st, s3_client=s3).cached and gets == []  # reused by ETag


def test_missing_object(tmp_path, s3, bucket):
    with pytest.raises(WeightsError, match=f"^s3://{bucket}/nope.gguf not found$"):
        weights.fetch(storage(tmp_path, f"s3://{bucket}/nope.gguf"), s3_client=s3)


def test_missing_bucket(tmp_path, s3):
    with pytest.raises(WeightsError, match="not found"):
        weights.fetch(storage(tmp_path, "s3://no-such-bucket-llmfn/x.gguf"), s3_client=s3)


def test_unreachable_endpoint(tmp_path, monkeypatch):
    import boto3

    from scripts import services
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")  # credentials, so that the request is sent
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    st = storage(tmp_path, "s3://models/x.gguf", S3_MAX_ATTEMPTS="1",
                 S3_ENDPOINT_URL=f"http://127.0.0.1:{services.free_port()}")
    client = weights.make_s3_client(st)
    with pytest.raises(WeightsError, match="unreachable"):
        weights.fetch(st, s3_client=client)


def test_missing_credentials_fail_for_good_and_say_so(tmp_path, minio, uploaded, monkeypatch):
    """No credentials anywhere in boto3's chain: not "endpoint unreachable" (which is retried
    for 15 minutes) but a permanent error naming the settings to set."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches what earlier tests found
    uri, _ = uploaded
    st = storage(tmp_path / "cache", uri, S3_ENDPOINT_URL=minio.endpoint_url)
    with pytest.raises(WeightsError, match="no S3 credentials.*AWS_ACCESS_KEY_ID") as err:
        weights.fetch(st)
    assert not err.value.transient
    assert leftovers(tmp_path / "cache") == []


def test_pinned_in_cache_is_true_only_for_a_verified_file_of_that_sha256(tmp_path, s3,
                                                                        uploaded):
    uri, digest = uploaded
    st = storage(tmp_path, uri, MODEL_SHA256=digest)
    assert not weights.pinned_in_cache(st)
    weights.fetch(st, s3_client=s3)
    assert weights.pinned_in_cache(st)
    assert not weights.pinned_in_cache(storage(tmp_path, uri))  # no MODEL_SHA256: a HEAD
    assert not weights.pinned_in_cache(storage(tmp_path, uri, MODEL_SHA256="0" * 64))
    cached = weights.cache_path(str(tmp_path), *uri[5:].split("/", 1))
    with open(cached, "ab") as f:  # changed behind the sidecar's back
        f.write(b"x")
    assert not weights.pinned_in_cache(st)


def test_make_s3_client_uses_settings_and_aws_chain(tmp_path, s3_env, uploaded):
    uri, digest = uploaded
    st = storage(tmp_path, uri, S3_ENDPOINT_URL=s3_env["S3_ENDPOINT_URL"], S3_MAX_ATTEMPTS="7",
                 S3_CONNECT_TIMEOUT_S="1.5", S3_READ_TIMEOUT_S="9")
    client = weights.make_s3_client(st)
    config = client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert (config.connect_timeout, config.read_timeout) == (1.5, 9.0)
    assert weights.fetch(st).sha256 == digest  # builds its own client the same way


def test_bad_uris(tmp_path):
    for uri in ("http://x/y", "s3://bucket-only", "s3:///key"):
        with pytest.raises(WeightsError, match="MODEL_URI"):
            weights.fetch(storage(tmp_path, uri))
    with pytest.raises(WeightsError, match="not allowed"):
        weights.fetch(storage(tmp_path, "s3://b/../../etc/passwd"), s3_client=object())


def test_file_uri_is_verified_in_place(tmp_path, model_file, payload):
    digest = hashlib.sha256(payload).hexdigest()
    result = weights.fetch(storage(tmp_path / "cache", model_file.as_uri(),
                                   MODEL_SHA256=digest))
    assert (result.path, result.sha256, result.size_bytes) == (str(model_file), digest,
                                                               len(payload))
    assert result.cached and result.download_s == 0.0
    assert not (tmp_path / "cache").exists()  # no copy
    no_sha = weights.fetch(storage(tmp_path, model_file.as_uri()))
    assert no_sha.sha256 == digest


def test_file_uri_mismatch_and_missing(tmp_path, model_file):
    with pytest.raises(WeightsError, match="sha256 mismatch for file://"):
        weights.fetch(storage(tmp_path, model_file.as_uri(), MODEL_SHA256="1" * 64))
    with pytest.raises(WeightsError, match="not found"):
        weights.fetch(storage(tmp_path, (tmp_path / "absent.gguf").as_uri()))


CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from llmfn import settings, weights
    name, cache, uri, go = sys.argv[1:5]
    st = settings.build(settings.StorageSettings, {
        "MODEL_URI": uri, "MODEL_CACHE_DIR": cache, "S3_CHUNK_BYTES": str(5 << 20),
        "S3_ENDPOINT_URL": __import__("os").environ["S3_ENDPOINT_URL"]})
    client = weights.make_s3_client(st)
    gets = []
    client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(1))
    Path(go + "." + name).touch()
    end = time.monotonic() + 30
    while not Path(go).exists():
        if time.monotonic() > end:
            sys.exit("no go signal")
        time.sleep(0.01)
    result = weights.fetch(st, s3_client=client)
    print(json.dumps({"cached": result.cached, "gets": len(gets), "sha256": result.sha256}))
""")


def test_two_processes_download_once(tmp_path, s3_env, uploaded):
    """Two cold starts on one cache dir, released at the same moment: one downloads, the
    other waits on the lock and reuses the verified file."""
    uri, digest = uploaded
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, name, str(tmp_path / "cache"), uri,
                               str(go)], stdout=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    try:
        end = time.monotonic() + 60
        while not all(Path(f"{go}.{n}").exists() for n in ("a", "b")):
            assert time.monotonic() < end, "children did not start"
            assert all(p.poll() is None for p in procs), "a child exited early"
            time.sleep(0.01)
        go.touch()
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert sorted(o["gets"] for o in outs) == [0, 3]
    assert {o["sha256"] for o in outs} == {digest}
