"""The gunicorn entry point: ``gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app``.

Imported in the worker (no preload), so the MongoClient is created after fork; connecting runs
in the background and /health/readiness reports it.
"""
from llmfn.runtime import build_runtime
from llmfn.settings import environ_copy

from .func import FUNCTION, create_runtime

runtime = build_runtime(FUNCTION, create_runtime, environ_copy())
runtime.start()
app = runtime.app
