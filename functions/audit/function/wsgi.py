"""WSGI entry point for gunicorn: `gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app`.

Imported in the worker (gunicorn_conf has preload_app = False); the MongoClient is created
on the first request, after fork.
"""
from llmfn.settings import environ_copy

from .app import create_app
from .settings import AuditSettings

app = create_app(AuditSettings.from_mapping(environ_copy()))
