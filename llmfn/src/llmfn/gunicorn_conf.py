"""gunicorn configuration for every function.

Used as `gunicorn -c llmfn/gunicorn_conf.py function.wsgi:app`. gthread, draining at SIGTERM before
it stops listening (llmfn.gunicorn_worker) (never `sync`, whose timeout kills long streams; never
gevent, which a blocking C call stalls), one worker, app imported in the worker (no preload) so the
model loads after fork, threads for health and metrics while a generation runs, graceful timeout for
streams.
"""
from llmfn.settings import EventSettings, GunicornSettings, ServerSettings, build, environ_copy

_env = environ_copy()
_cfg = build(GunicornSettings, _env)
_server, _events = build(ServerSettings, _env), build(EventSettings, _env)

bind = _cfg.bind or f"0.0.0.0:{_cfg.port}"
worker_class = "llmfn.gunicorn_worker.DrainingWorker"  # gthread that drains at SIGTERM
workers = 1
threads = _cfg.threads
preload_app = False
# the runtime's stop (Runtime._stop) before gunicorn may kill the worker: the grace, or
# SHUTDOWN_MIN_S when longer; up to 5 s for the last bytes of responses cancelled at the end
# of the grace; EVENTS_FLUSH_S for the events; then a margin
graceful_timeout = int(max(_server.grace_s + 5, _server.min_stop_s) + _events.flush_s) + 5
timeout = 120  # worker heartbeat (the gthread main loop), not a request timeout
# above queue-proxy's idle pool (Go's IdleConnTimeout, 90 s): a connection queue-proxy may
# still reuse is never closed here first (it does not retry a POST)
keepalive = 95
# gunicorn 27 opens a control socket at one fixed path per user: with several servers on one
# host (make run, the tests) the last one takes it and the first to stop deletes it. Unused.
control_socket_disable = True
loglevel = _server.log_level
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
