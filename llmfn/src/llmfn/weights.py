"""Fetch the GGUF weights from ``s3://bucket/key`` or ``file:///path`` and verify their sha256.

S3 objects are downloaded with s3transfer's ``TransferManager(client, config)`` (parallel
ranged GETs) into ``MODEL_CACHE_DIR/<bucket>/<key>``: a temp file in the same directory,
hashed, then renamed, so a half-written file is never seen under the final name. The
expected sha256 is ``MODEL_SHA256`` or else the object's ``sha256`` user metadata; with
neither the hash is computed and recorded but nothing fails. A mismatch deletes the file and
downloads again, up to ``MODEL_VERIFY_ATTEMPTS`` times, then raises :class:`WeightsError`.

Several processes sharing a cache directory download once: the fetch runs under a file lock
``<file>.lock``, and whoever comes second finds the verified file.

Cache reuse: after a file is verified a sidecar ``<file>.sha256`` (JSON: sha256, size,
mtime_ns, etag) is written. A cached file whose size and mtime still match its sidecar, and
whose sidecar sha256 equals the expected one, is reused without re-hashing (re-hashing a
multi-GB file costs seconds of every warm start); a file without a matching sidecar is
re-hashed before it is trusted. The sidecar is only ever written by this module after a
successful hash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import filelock
from s3transfer.subscribers import BaseSubscriber

from .settings import StorageSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_HASH_CHUNK_BYTES = 4 * 1024 * 1024
_LOG_EVERY_S = 2.0


class WeightsError(RuntimeError):
    """The weights could not be fetched or did not verify; the message says which and why."""


@dataclass(frozen=True)
class FetchResult:
    """Where the verified weights are and what the fetch cost (cold-start phases)."""
    path: str              # local file to load
    sha256: str            # hex digest of the file as verified (or computed)
    size_bytes: int
    cached: bool           # True: an already verified local file was used, nothing downloaded
    download_s: float      # wall time spent downloading, all attempts, s
    verify_s: float        # wall time spent hashing, s
    attempts: int = 0      # downloads made (0 when cached or file://)
    lock_wait_s: float = 0.0  # time waiting for another process's download, s


def make_s3_client(storage: StorageSettings):
    """A boto3 S3 client from settings; credentials come from the usual AWS chain."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=storage.s3_region,
        # total_max_attempts counts the first request too (botocore's max_attempts does not),
        # the way AWS_MAX_ATTEMPTS does: S3_MAX_ATTEMPTS=1 means no retry.
        retries={"mode": "standard", "total_max_attempts": storage.s3_max_attempts},
        connect_timeout=storage.s3_connect_timeout_s,
        read_timeout=storage.s3_read_timeout_s,
        max_pool_connections=max(10, storage.s3_max_concurrency),
        # MinIO and other self-hosted endpoints serve path-style URLs.
        s3={"addressing_style": "path"} if storage.s3_endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=storage.s3_endpoint_url or None, config=config)


def transfer_config(storage: StorageSettings):
    """s3transfer config: ``s3_chunk_bytes`` ranged GETs, ``s3_max_concurrency`` at once."""
    from s3transfer.manager import TransferConfig

    return TransferConfig(multipart_threshold=storage.s3_chunk_bytes,
                          multipart_chunksize=storage.s3_chunk_bytes,
                          max_request_concurrency=storage.s3_max_concurrency)


def fetch(storage: StorageSettings, *, s3_client=None, progress: Progress | None = None,
          lock_timeout_s: float = 3600.0) -> FetchResult:
    """Make the weights named by ``storage.model_uri`` available locally, verified.

    ``s3_client`` defaults to :func:`make_s3_client`; ``progress(bytes_done, total_bytes)`` is
    called from transfer threads while downloading. ``lock_timeout_s`` bounds the wait for
    another process downloading the same file.
    """
    uri = storage.model_uri
    expected = storage.model_sha256.strip().lower() or None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return _fetch_file(parsed, expected)
    if parsed.scheme == "s3":
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not key:
            raise WeightsError(f"MODEL_URI {uri!r} must be s3://bucket/key")
        client = s3_client if s3_client is not None else make_s3_client(storage)
        return _fetch_s3(client, storage, bucket, key, expected, progress, lock_timeout_s)
    raise WeightsError(f"MODEL_URI {uri!r} must start with s3:// or file://")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _fetch_file(parsed, expected: str | None) -> FetchResult:
    if parsed.netloc not in ("", "localhost"):
        raise WeightsError(f"file:// URI must name a local path, got host {parsed.netloc!r}")
    path = Path(urllib.parse.unquote(parsed.path))
    if not path.is_file():
        raise WeightsError(f"file://{path} not found")
    t0 = time.perf_counter()
    digest = sha256_file(path)
    verify_s = time.perf_counter() - t0
    if expected and digest != expected:
        raise WeightsError(f"sha256 mismatch for file://{path}: expected {expected}, "
                           f"got {digest}")
    return FetchResult(str(path), digest, path.stat().st_size, True, 0.0, verify_s)


def cache_path(cache_dir: str, bucket: str, key: str) -> Path:
    """``cache_dir/bucket/key``; refuses keys that would leave the cache directory."""
    parts = PurePosixPath(key).parts
    if bucket in (".", "..") or any(p in (".", "..") for p in parts):
        raise WeightsError(f"refusing S3 key {key!r}: '.' and '..' are not allowed")
    return Path(cache_dir, bucket, *parts)


def _fetch_s3(client, storage, bucket, key, expected, progress, lock_timeout_s) -> FetchResult:
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket}/{key}"
    path = cache_path(storage.cache_dir, bucket, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    t_lock = time.perf_counter()
    try:
        lock = filelock.FileLock(f"{path}.lock", timeout=lock_timeout_s)
        lock.acquire()
    except filelock.Timeout:
        raise WeightsError(f"{uri}: another process held {path}.lock for "
                           f"{lock_timeout_s:.0f} s") from None
    try:
        lock_wait_s = time.perf_counter() - t_lock
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise WeightsError(f"{uri} not found") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise WeightsError(f"{uri}: access denied (check the S3 credentials)") from None
            raise WeightsError(f"{uri}: HEAD failed with {code or 'an error'}") from err
        except BotoCoreError as err:
            raise WeightsError(f"{uri}: S3 endpoint unreachable ({type(err).__name__})") from err
        size = int(head["ContentLength"])
        etag = head.get("ETag", "")
        expected = expected or head.get("Metadata", {}).get("sha256", "").strip().lower() or None

        for stale in path.parent.glob(f".{path.name}.*.part"):  # left by a killed process
            _unlink(stale)
        cached = _reuse_cached(path, size, etag, expected)
        if cached is not None:
            digest, verify_s = cached
            log.info("using cached %s (sha256 %s)", path, digest[:12])
            return FetchResult(str(path), digest, size, True, 0.0, verify_s,
                               lock_wait_s=lock_wait_s)

        config = transfer_config(storage)
        download_s = verify_s = 0.0
        for attempt in range(1, storage.verify_attempts + 1):
            tmp = _download(client, config, bucket, key, path, size, progress)
            try:
                download_s += tmp[1]
                got_size = os.path.getsize(tmp[0])
                t0 = time.perf_counter()
                digest = sha256_file(tmp[0])
                verify_s += time.perf_counter() - t0
                if got_size != size:
                    problem = f"got {got_size} of {size} bytes"
                elif expected and digest != expected:
                    problem = f"sha256 mismatch: expected {expected}, got {digest}"
                else:
                    os.replace(tmp[0], path)
                    _write_sidecar(path, digest, etag)
                    if not expected:
                        log.warning("%s has no sha256 to verify against (set MODEL_SHA256 or "
                                    "the object's sha256 metadata); computed %s", uri, digest)
                    log.info("fetched %s in %.1f s, verified in %.1f s (attempt %d)", uri,
                             download_s, verify_s, attempt)
                    return FetchResult(str(path), digest, size, False, download_s, verify_s,
                                       attempts=attempt, lock_wait_s=lock_wait_s)
            finally:
                _unlink(tmp[0])
            log.warning("%s attempt %d/%d: %s", uri, attempt, storage.verify_attempts, problem)
        raise WeightsError(f"{uri}: {problem} after {storage.verify_attempts} attempts")
    finally:
        lock.release()


def _reuse_cached(path: Path, size: int, etag: str, expected: str | None):
    """(sha256, verify_s) when the cached file is the right one, else None (file removed)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        _unlink(_sidecar(path))
        return None
    if st.st_size == size:
        side = _read_sidecar(path)
        if (side and side.get("size") == st.st_size and side.get("mtime_ns") == st.st_mtime_ns
                and (side.get("sha256") == expected if expected else side.get("etag") == etag)):
            return side["sha256"], 0.0
        t0 = time.perf_counter()
        digest = sha256_file(path)
        verify_s = time.perf_counter() - t0
        if expected and digest == expected:
            _write_sidecar(path, digest, etag)
            return digest, verify_s
    log.info("cached %s is stale or corrupt; downloading again", path)
    _unlink(path)
    _unlink(_sidecar(path))
    return None


def _download(client, config, bucket, key, path: Path, size: int, progress):
    """Download into a temp file beside ``path``; returns (temp path, seconds)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.manager import TransferManager

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    meter = _Meter(f"s3://{bucket}/{key}", size, progress)
    t0 = time.perf_counter()
    try:
        with os.fdopen(fd, "wb") as f:
            with TransferManager(client, config) as manager:
                future = manager.download(bucket, key, f, subscribers=[meter])
                future.result()
            f.flush()
            os.fsync(f.fileno())
    except ClientError as err:
        _unlink(tmp)
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise WeightsError(f"s3://{bucket}/{key} not found") from None
        raise WeightsError(f"s3://{bucket}/{key}: download failed with {code}") from err
    except (BotoCoreError, OSError) as err:
        _unlink(tmp)
        raise WeightsError(f"s3://{bucket}/{key}: download failed "
                           f"({type(err).__name__})") from err
    except BaseException:
        _unlink(tmp)
        raise
    meter.done()
    return tmp, time.perf_counter() - t0


class _Meter(BaseSubscriber):
    """s3transfer subscriber: sums bytes from transfer threads, calls ``progress`` and logs
    percent and MB/s at most every 2 s."""

    def __init__(self, uri: str, total: int, progress: Progress | None):
        self.uri, self.total, self.progress = uri, total, progress
        self.done_bytes = 0
        self._lock = threading.Lock()
        self._t0 = self._last_log = time.monotonic()

    def on_progress(self, future=None, bytes_transferred: int = 0, **kwargs) -> None:
        with self._lock:
            self.done_bytes += bytes_transferred
            done = self.done_bytes
            now = time.monotonic()
            due = now - self._last_log >= _LOG_EVERY_S
            if due:
                self._last_log = now
        if self.progress is not None:
            self.progress(done, self.total)
        if due:
            self._log(done, now)

    def done(self) -> None:
        self._log(self.done_bytes, time.monotonic())

    def _log(self, done: int, now: float) -> None:
        pct = 100.0 * done / self.total if self.total else 100.0
        mb_s = done / 1e6 / max(now - self._t0, 1e-6)
        log.info("downloading %s: %.0f %% (%d/%d bytes, %.1f MB/s)", self.uri, pct, done,
                 self.total, mb_s)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None


def _write_sidecar(path: Path, digest: str, etag: str) -> None:
    st = path.stat()
    data = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "etag": etag}
    tmp = _sidecar(path).with_suffix(".sha256.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, _sidecar(path))


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
