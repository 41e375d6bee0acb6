"""Fetch the GGUF weights from ``s3://bucket/key`` or ``file:///path`` and verify their sha256.

S3 objects are downloaded with parallel ranged GETs (``S3_CHUNK_BYTES`` each,
``S3_MAX_CONCURRENCY`` at once) into ``MODEL_CACHE_DIR/<bucket>/<key>``: a temp file in the
same directory, then renamed, so a half-written file is never seen under the final name.
The sha256 is computed while downloading: the ranges are hashed in file order as they arrive
(from memory, before they are dropped), so verifying costs no second read of the file; only
the tail after the last byte (hashing the last range) is left when the download ends. A
range cut off mid-body is resumed from its last byte, with backoff. The expected sha256 is
``MODEL_SHA256`` or else the object's ``sha256`` user metadata; with neither the hash is
computed and recorded but nothing fails. A short file or a mismatch deletes the temp file and
downloads again, up to ``MODEL_VERIFY_ATTEMPTS`` times, then raises :class:`WeightsError`.

Several processes sharing a cache directory download once: the fetch runs under a file lock
``<file>.lock``, and whoever comes second finds the verified file.

Cache reuse: after a file is verified a sidecar ``<file>.sha256`` (JSON: sha256, size,
mtime_ns, etag) is written. A cached file whose size and mtime still match its sidecar, and
whose sidecar sha256 equals the expected one, is reused without re-hashing (re-hashing a
multi-GB file costs seconds of every warm start); a file without a matching sidecar is
re-hashed before it is trusted. The sidecar is only ever written by this module after a
successful hash. With ``MODEL_SHA256`` set, a matching sidecar is trusted without asking S3
at all (no HEAD, and boto3 is never imported: the sha256 pins the content); without it the
object's ETag (HEAD) must match the sidecar's.

Errors are :class:`WeightsError`; ``transient`` says whether trying again later may help (the
endpoint unreachable, 5xx, timeouts) or not (not found, access denied, a checksum mismatch).
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .backoff import Backoff
from .settings import StorageSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_HASH_CHUNK_BYTES = 4 * 1024 * 1024
_READ_BYTES = 1024 * 1024  # one read of a response body
_LOG_EVERY_S = 2.0
_BUFFER_BYTES = 256 * 1024 * 1024  # at most this much downloaded but not yet hashed
# Resumptions of one range cut off mid-body, and the waits between them (0.5-1, 1-2, 2-4, 4-8 s)
_RANGE_RETRIES = 4
_RANGE_RETRY = Backoff(first_s=1.0, max_s=8.0)
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable",
                    "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}


class WeightsError(RuntimeError):
    """The weights could not be fetched or did not verify; the message says which and why.
    ``transient``: the cause may go away (S3 down or overloaded), so a retry later may work."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class FetchResult:
    """Where the verified weights are and what the fetch cost (cold-start phases)."""
    path: str              # local file to load
    sha256: str            # hex digest of the file as verified (or computed)
    size_bytes: int
    cached: bool           # True: an already verified local file was used, nothing downloaded
    download_s: float      # wall time spent downloading, all attempts, s
    verify_s: float        # wall time spent hashing beyond the download (the tail), s
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
        max_pool_connections=max(10, storage.s3_max_concurrency + 2),
        # MinIO and other self-hosted endpoints serve path-style URLs.
        s3={"addressing_style": "path"} if storage.s3_endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=storage.s3_endpoint_url or None, config=config)


def fetch(storage: StorageSettings, *, s3_client=None, progress: Progress | None = None,
          lock_timeout_s: float = 3600.0) -> FetchResult:
    """Make the weights named by ``storage.model_uri`` available locally, verified.

    ``s3_client`` defaults to :func:`make_s3_client` (made only when S3 must be asked);
    ``progress(bytes_done, total_bytes)`` is called from download threads.
    ``lock_timeout_s`` bounds the wait for another process downloading the same file.
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
        return _fetch_s3(s3_client, storage, bucket, key, expected, progress, lock_timeout_s)
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


def _client_error(uri: str, err, what: str) -> WeightsError:
    """A WeightsError for a botocore ClientError or BotoCoreError of ``what`` (HEAD, GET)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return WeightsError(f"{uri}: no S3 credentials ({err}); set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (the Secret in deploy/), or another source "
                            "of boto3's credential chain")
    if not isinstance(err, ClientError):
        return WeightsError(f"{uri}: S3 endpoint unreachable ({type(err).__name__})",
                            transient=True)
    code = str(err.response.get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
        return WeightsError(f"{uri} not found")
    if code in ("403", "AccessDenied", "Forbidden"):
        return WeightsError(f"{uri}: access denied (check the S3 credentials)")
    if code in ("412", "PreconditionFailed"):
        return WeightsError(f"{uri}: the object changed during the download", transient=True)
    return WeightsError(f"{uri}: {what} failed with {code or 'an error'}",
                        transient=code in _TRANSIENT_CODES or code.startswith("5"))


def _fetch_s3(client, storage, bucket, key, expected, progress, lock_timeout_s) -> FetchResult:
    import filelock

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
        for stale in path.parent.glob(f".{path.name}.*.part"):  # left by a killed process
            _unlink(stale)
        if expected:  # the sha256 pins the content: a matching sidecar needs no HEAD
            digest = _pinned_cache(path, expected)
            if digest:
                log.info("using cached %s (sha256 %s, pinned by MODEL_SHA256)", path,
                         digest[:12])
                return FetchResult(str(path), digest, path.stat().st_size, True, 0.0, 0.0,
                                   lock_wait_s=lock_wait_s)
        if client is None:
            client = make_s3_client(storage)
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as err:
            raise _client_error(uri, err, "HEAD") from err
        size = int(head["ContentLength"])
        etag = head.get("ETag", "")
        expected = expected or head.get("Metadata", {}).get("sha256", "").strip().lower() or None

        cached = _reuse_cached(path, size, etag, expected)
        if cached is not None:
            digest, verify_s = cached
            log.info("using cached %s (sha256 %s)", path, digest[:12])
            return FetchResult(str(path), digest, size, True, 0.0, verify_s,
                               lock_wait_s=lock_wait_s)

        download_s = verify_s = 0.0
        for attempt in range(1, storage.verify_attempts + 1):
            tmp, digest, got_size, dl_s, tail_s = _download(client, storage, bucket, key, path,
                                                            size, etag, progress)
            try:
                download_s += dl_s
                verify_s += tail_s
                if got_size != size:
                    problem = f"got {got_size} of {size} bytes"
                elif expected and digest != expected:
                    problem = f"sha256 mismatch: expected {expected}, got {digest}"
                else:
                    os.replace(tmp, path)
                    _write_sidecar(path, digest, etag)
                    if not expected:
                        log.warning("%s has no sha256 to verify against (set MODEL_SHA256 or "
                                    "the object's sha256 metadata); computed %s", uri, digest)
                    log.info("fetched %s in %.2f s (%.0f MB/s), hash done %.3f s after the "
                             "last byte (attempt %d)", uri, download_s,
                             size / 1e6 / max(dl_s, 1e-6), verify_s, attempt)
                    return FetchResult(str(path), digest, size, False, download_s, verify_s,
                                       attempts=attempt, lock_wait_s=lock_wait_s)
            finally:
                _unlink(tmp)
            log.warning("%s attempt %d/%d: %s", uri, attempt, storage.verify_attempts, problem)
        raise WeightsError(f"{uri}: {problem} after {storage.verify_attempts} attempts")
    finally:
        lock.release()


def pinned_in_cache(storage: StorageSettings) -> bool:
    """Whether :func:`fetch` will find the S3 object in the cache, pinned by MODEL_SHA256 (no
    S3 request, no boto3): a hint read without the lock, never raises."""
    try:
        parsed = urllib.parse.urlparse(storage.model_uri)
        expected = storage.model_sha256.strip().lower()
        if parsed.scheme != "s3" or not expected:
            return False
        path = cache_path(storage.cache_dir, parsed.netloc, parsed.path.lstrip("/"))
        return _pinned_cache(path, expected) is not None
    except (OSError, ValueError, WeightsError):
        return False


def _pinned_cache(path: Path, expected: str) -> str | None:
    """The sha256 when the cached file's sidecar records ``expected`` for its current size and
    mtime (no S3 request, no hashing); else None and nothing is touched."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    side = _read_sidecar(path)
    if (side and side.get("size") == st.st_size and side.get("mtime_ns") == st.st_mtime_ns
            and side.get("sha256") == expected):
        return expected
    return None


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


class _Range:
    """One ranged GET: bytes [start, end) of the object; pieces received but not yet hashed."""
    __slots__ = ("start", "end", "got", "pieces", "done")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.got = 0
        self.pieces: list[bytes] = []
        self.done = False


class _Download:
    """Parallel ranged GETs into ``fd`` (pwrite), hashed in file order as the ranges arrive.

    Workers start range ``i`` only while ``i`` is within ``window`` ranges of the one being
    hashed, so at most ``window`` ranges are held in memory. A range cut off mid-body is
    resumed from its last byte (``_RANGE_RETRY`` backoff); any other failure stops all.
    """

    def __init__(self, client, bucket: str, key: str, fd: int, size: int, etag: str,
                 chunk: int, concurrency: int, meter: _Meter):
        self.client, self.bucket, self.key, self.fd = client, bucket, key, fd
        self.etag, self.meter = etag, meter
        self.uri = f"s3://{bucket}/{key}"
        self.ranges = [_Range(a, min(a + chunk, size)) for a in range(0, size, chunk)]
        self.workers = max(1, min(concurrency, len(self.ranges)))
        self.window = max(self.workers + 1, min(2 * self.workers, _BUFFER_BYTES // chunk))
        self.cond = threading.Condition()
        self.next_range = 0  # next range a worker takes
        self.head = 0        # range being hashed
        self.error: BaseException | None = None
        self.stopped = False  # a short range was found: take and read no more
        self.hash = hashlib.sha256()
        self.t_last_byte = 0.0

    def run(self) -> str:
        """Download and hash; returns the hex sha256 (raises the first error)."""
        if not self.ranges:
            return self.hash.hexdigest()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="weights-get") as pool:
            for _ in range(self.workers):
                pool.submit(self._worker)
            try:
                self._hash_in_order()
            except BaseException as err:
                self._fail(err)
        if self.error is not None:
            raise self.error
        return self.hash.hexdigest()

    def _fail(self, err: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = err
            self.cond.notify_all()

    def _take(self) -> _Range | None:
        with self.cond:
            while (self.error is None and not self.stopped
                   and self.head + self.window <= self.next_range < len(self.ranges)):
                self.cond.wait()
            if self.error is not None or self.stopped or self.next_range >= len(self.ranges):
                return None
            r = self.ranges[self.next_range]
            self.next_range += 1
            return r

    def _worker(self) -> None:
        try:
            while (r := self._take()) is not None:
                self._get(r)
        except BaseException as err:  # noqa: BLE001  (handed to run())
            self._fail(err)

    def _get(self, r: _Range) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        retries, delays = 0, _RANGE_RETRY.delays()
        while r.start + r.got < r.end:
            extra = {"IfMatch": self.etag} if self.etag else {}
            try:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=self.key,
                    Range=f"bytes={r.start + r.got}-{r.end - 1}", **extra)
                body = resp["Body"]
                try:
                    while r.start + r.got < r.end:
                        piece = body.read(min(_READ_BYTES, r.end - r.start - r.got))
                        if not piece:
                            break
                        os.pwrite(self.fd, piece, r.start + r.got)
                        with self.cond:
                            if self.error is not None or self.stopped:
                                return
                            r.got += len(piece)
                            r.pieces.append(piece)
                            self.cond.notify_all()
                        self.meter.add(len(piece))
                finally:
                    body.close()
                if r.start + r.got < r.end:  # a body shorter than its range: the object is
                    break                    # shorter than HEAD said; the size check says so
            except ClientError as err:
                raise _client_error(self.uri, err, "GET") from err
            except (BotoCoreError, OSError) as err:  # cut off mid-body, timeouts: resume
                if retries >= _RANGE_RETRIES:
                    raise WeightsError(f"{self.uri}: download failed ({type(err).__name__})",
                                       transient=True) from err
                log.warning("%s: range %d-%d cut off at %d (%s); resuming", self.uri, r.start,
                            r.end - 1, r.start + r.got, type(err).__name__)
                time.sleep(next(delays))
                retries += 1
        with self.cond:
            r.done = True
            self.cond.notify_all()

    def _hash_in_order(self) -> None:
        """Hash each range's pieces in file order as they arrive, then drop them."""
        while self.head < len(self.ranges):
            r = self.ranges[self.head]
            with self.cond:
                while not r.pieces and not r.done and self.error is None:
                    self.cond.wait()
                if self.error is not None:
                    return
                pieces, r.pieces = r.pieces, []
                finished = r.done  # set after its last piece: all of them are in ``pieces``
            for piece in pieces:
                self.hash.update(piece)  # releases the GIL
            if finished:
                with self.cond:
                    if r.got != r.end - r.start:  # a short body: nothing after it counts
                        self.stopped = True
                        self.cond.notify_all()
                        return
                    self.head += 1
                    self.cond.notify_all()

    @property
    def received(self) -> int:
        return sum(r.got for r in self.ranges)


def _download(client, storage, bucket, key, path: Path, size: int, etag: str, progress):
    """Download into a temp file beside ``path``, hashing on the way.
    Returns (temp path, sha256, bytes received, download s, hash tail s)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    meter = _Meter(f"s3://{bucket}/{key}", size, progress)
    t0 = time.perf_counter()
    try:
        try:
            if size:
                os.posix_fallocate(fd, 0, size)
        except OSError:
            pass  # not every filesystem can; pwrite extends the file anyway
        dl = _Download(client, bucket, key, fd, size, etag, storage.s3_chunk_bytes,
                       storage.s3_max_concurrency, meter)
        digest = dl.run()
        t_hashed = time.monotonic()
        got = dl.received
        os.fsync(fd)
    except WeightsError:
        os.close(fd)
        _unlink(tmp)
        raise
    except OSError as err:
        os.close(fd)
        _unlink(tmp)
        raise WeightsError(f"s3://{bucket}/{key}: download failed "
                           f"({type(err).__name__}: {err})") from err
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    meter.done()
    total_s = time.perf_counter() - t0
    # Verify: from the last byte received until the digest was ready (the hash tail); the
    # rest of the wall time (GETs, writes, fsync) is the download.
    tail_s = max(0.0, t_hashed - meter.t_last) if meter.t_last else 0.0
    return tmp, digest, got, total_s - tail_s, tail_s


class _Meter:
    """Sums bytes from download threads, calls ``progress`` and logs percent and MB/s at most
    every 2 s."""

    def __init__(self, uri: str, total: int, progress: Progress | None):
        self.uri, self.total, self.progress = uri, total, progress
        self.done_bytes = 0
        self._lock = threading.Lock()
        self.t0 = self._last_log = time.monotonic()
        self.t_last = 0.0  # time.monotonic() of the last byte
        self.t_done = 0.0

    def add(self, n: int) -> None:
        with self._lock:
            self.done_bytes += n
            done = self.done_bytes
            now = self.t_last = time.monotonic()
            due = now - self._last_log >= _LOG_EVERY_S
            if due:
                self._last_log = now
        if self.progress is not None:
            self.progress(done, self.total)
        if due:
            self._log(done, now)

    def done(self) -> None:
        self.t_done = time.monotonic()
        self._log(self.done_bytes, self.t_done)

    def _log(self, done: int, now: float) -> None:
        pct = 100.0 * done / self.total if self.total else 100.0
        mb_s = done / 1e6 / max(now - self.t0, 1e-6)
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
