"""Fixtures every test tree shares: the real local stack (MinIO, FerretDB) from scripts/services.py.

Missing binaries are installed by scripts/install_services.sh, so no test skips for want of a
service. The one test that may skip is the official func.yaml schema check, without
../shared/schemas beside the clone (docs/development.md "Tests").
"""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts import services
from tests.support.eventsink import running_receiver
from tests.support.stack import started

REPO_ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    """A MinIO server on a free port with its own state dir (credentials as attributes)."""
    yield from started(services.MinioServer(tmp_path_factory.mktemp("minio"),
                                            port=services.free_port()))


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory):
    """A FerretDB (SQLite handler) on a free port; connect with ``pymongo.MongoClient(.uri)``."""
    yield from started(services.FerretDBServer(tmp_path_factory.mktemp("ferretdb"),
                                               port=services.free_port()))


@pytest.fixture(scope="module")
def sink():
    """A CloudEvents receiver (``K_SINK`` of the functions a test module starts)."""
    with running_receiver() as rec:
        yield rec
