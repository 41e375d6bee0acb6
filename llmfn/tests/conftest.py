"""llmfn unit-test fixtures on the session MinIO of the root conftest.py."""
from __future__ import annotations

import uuid

import pytest


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
