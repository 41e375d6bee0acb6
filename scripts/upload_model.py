#!/usr/bin/env python3
"""Upload a model file to S3 with its sha256 in the object metadata (``sha256=<hex>``).

    upload_model.py FILE s3://bucket/key [--endpoint-url URL]

Creates the bucket if missing and uploads in parts (boto3 ``TransferConfig``) with a progress
bar on stderr. Credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``, ...).
The weight fetcher (llmfn.weights) verifies downloads against this metadata.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
import urllib.parse

CHUNK_BYTES = 8 * 1024 * 1024


def sha256_file(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def ensure_bucket(client, bucket: str) -> None:
    """Create ``bucket`` unless it exists."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        if str(err.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket",
                                                                 "NotFound"):
            raise
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass


class ProgressBar:
    """A one-line progress bar on a stream (called from boto3's transfer threads)."""

    def __init__(self, label: str, total_bytes: int, stream=sys.stderr, width: int = 30):
        self.label, self.total, self.stream, self.width = label, total_bytes, stream, width
        self.done = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, n_bytes: int) -> None:
        with self._lock:
            self.done += n_bytes
            now = time.monotonic()
            if now - self._last < 0.2 and self.done < self.total:
                return
            self._last = now
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(frac * self.width)
            mb_s = self.done / 1e6 / max(now - self._t0, 1e-6)
            self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {frac * 100:5.1f} % "
                              f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {mb_s:.1f} MB/s")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()


def upload(client, path: str, bucket: str, key: str, *, progress: bool = False,
           sha256: str | None = None) -> str:
    """Upload ``path`` to ``bucket``/``key`` with ``sha256`` metadata; returns the sha256.

    ``sha256`` skips hashing when the caller already knows it (e.g. to upload a deliberately
    wrong checksum in a test).
    """
    from boto3.s3.transfer import TransferConfig

    digest = sha256 or sha256_file(path)
    ensure_bucket(client, bucket)
    size = os.path.getsize(path)
    callback = ProgressBar(f"s3://{bucket}/{key}", size) if progress else None
    client.upload_file(path, bucket, key, ExtraArgs={"Metadata": {"sha256": digest}},
                       Config=TransferConfig(multipart_threshold=CHUNK_BYTES,
                                             multipart_chunksize=CHUNK_BYTES,
                                             max_concurrency=4),
                       Callback=callback)
    return digest


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or not key:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="local model file")
    parser.add_argument("dest", help="s3://bucket/key")
    parser.add_argument("--endpoint-url", default=os.environ.get("S3_ENDPOINT_URL") or None,
                        help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: "
                             "$S3_ENDPOINT_URL, else AWS)")
    args = parser.parse_args(argv)
    import boto3

    bucket, key = parse_s3_uri(args.dest)
    if not os.path.isfile(args.file):
        parser.error(f"{args.file} is not a file")
    client = boto3.client("s3", endpoint_url=args.endpoint_url)
    digest = upload(client, args.file, bucket, key, progress=True)
    print(f"s3://{bucket}/{key} sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
