"""The gunicorn entry point: ``gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app``.

Imported in the worker (no preload), so the MongoClient is created after fork; connecting runs
in the background and /health/readiness reports it.
"""
from llmfn.settings import environ_copy

from .func import create_runtime

runtime = create_runtime(environ_copy())
runtime.start()
app = runtime.app
