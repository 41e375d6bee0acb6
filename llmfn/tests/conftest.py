"""Shared fixtures for the llmfn unit tests: a real MinIO (scripts/services.py) per session."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import services  # noqa: E402  (scripts/services.py)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    """A MinIO server on a free port with its own state dir; installs it if missing."""
    services.ensure_binaries()
    server = services.MinioServer(tmp_path_factory.mktemp("minio"), port=services.free_port())
    server.start()
    try:
        server.wait_ready(deadline_s=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(minio):
    """A boto3 S3 client for the session MinIO."""
    return minio.client()


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, empty bucket."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(minio, monkeypatch) -> dict[str, str]:
    """The AWS credential chain (env vars) pointed at the session MinIO, for clients that
    llmfn builds itself; restored after the test."""
    env = minio.client_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
