"""The gunicorn entry point: ``gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app``.

Imported in the worker (no preload), so the model loads after fork; loading runs in the
background and /health/readiness reports it.
"""
from llmfn.runtime import wsgi_app

from .func import SPEC

app = wsgi_app(SPEC)
