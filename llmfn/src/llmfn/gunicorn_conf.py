"""gunicorn configuration for every function (`gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app`).

gthread, draining at SIGTERM before it stops listening (llmfn.gunicorn_worker) (never `sync`, whose timeout kills long streams; never gevent, which a blocking C call
stalls), one worker, app imported in the worker (no preload) so the model loads after fork,
threads for health and metrics while a generation runs, graceful timeout for streams.
"""
from llmfn.settings import GunicornSettings, build, environ_copy

_cfg = build(GunicornSettings, environ_copy())

bind = _cfg.bind or f"0.0.0.0:{_cfg.port}"
worker_class = "llmfn.gunicorn_worker.DrainingWorker"  # gthread that drains at SIGTERM
workers = 1
threads = _cfg.threads
preload_app = False
graceful_timeout = int(_cfg.grace_s) + 5  # the runtime drains within grace_s, then flushes events
timeout = 120  # worker heartbeat (the gthread main loop), not a request timeout
keepalive = 75  # longer than typical ingress idle timeouts
# gunicorn 27 opens a control socket at one fixed path per user: with several servers on one
# host (make run, the tests) the last one takes it and the first to stop deletes it. Unused.
control_socket_disable = True
loglevel = _cfg.log_level
accesslog = "-"
errorlog = "-"


def worker_int(worker):
    """SIGINT/SIGQUIT in the worker: stop the runtime like SIGTERM does."""
    worker_exit(None, worker)


def worker_exit(server, worker):
    """Before the worker exits: finish in-flight work within the grace, flush events."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("llmfn.runtime") if app else None
    if runtime is not None:
        runtime.stop()
