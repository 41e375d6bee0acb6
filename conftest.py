"""Fixtures every test tree shares: the real local stack (MinIO, FerretDB) from scripts/services.py.

Missing binaries are installed by scripts/install_services.sh, so no test skips for want of a
service. The one test that may skip is the official func.yaml schema check, without
../shared/schemas beside the clone (docs/development.md "Tests").
"""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts import services
from tests.support.agents import AGENTS_KEY
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


@pytest.fixture(scope="session")
def agents_generate(minio, tmp_path_factory):
    """generate under gunicorn (SmolLM2-135M-Instruct from MinIO, ``API_KEYS=AGENTS_KEY``),
    shared by the agent-client test modules (the anthropic SDK, the JS clients): one model
    load for them all."""
    from scripts import procs, run
    from tests.support.models import upload_function_models

    tmp = tmp_path_factory.mktemp("agents-generate")
    upload_function_models(minio)
    env = run.function_env("generate", run.FUNCTIONS["generate"][2], minio, None, False, "")
    env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="2", API_KEYS=AGENTS_KEY)
    proc = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                 log_path=tmp / "generate.log").start()
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sink():
    """A CloudEvents receiver (``K_SINK`` of the functions a test module starts)."""
    with running_receiver() as rec:
        yield rec
