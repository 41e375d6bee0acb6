#!/usr/bin/env python3
"""`make run`: the whole stack on this machine, stopped cleanly by Ctrl-C.

Starts MinIO and FerretDB, uploads the models to ``s3://models/`` with their sha256 metadata,
then the local broker (scripts/broker.py: the Triggers of ``eventing/`` on this machine, in this
process) and each function found under ``functions/`` (its contract, ``llmfn.contract``: its
port, its model) with gunicorn the way its container does, waits for ``/health/readiness`` and
prints how to call it. The functions get the broker as K_SINK, as their SinkBindings give it in
the cluster (those that need MongoDB get FerretDB instead); reply events are appended to
``.state/logs/replies.jsonl``.
State and logs: ``.state/`` (logs in ``.state/logs/``). Ports: MINIO_PORT, FERRETDB_PORT,
BROKER_PORT, <FUNCTION>_PORT (GENERATE_PORT, ...). GUNICORN_CONF overrides the gunicorn config
file.

``KNATIVE=1`` serves each function as a Knative revision pod does (scripts/knative_pod.py):
gunicorn and Serving's real queue-proxy (``.state/bin/queue``, configured from ``kustomize
build deploy``) in the function's own network namespace, since queue-proxy's ports 8022 and
9090 are fixed; the usual port on 127.0.0.1 is relayed to the queue-proxy's 8012, and MinIO,
FerretDB and the broker are relayed into the pod from the host side of its veth (needs root).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from llmfn.contract import Local, discover
from scripts import broker, knative_pod, procs, services, upload_model
from scripts.model_files import smollm2_path

ROOT = services.REPO_ROOT
STATE = ROOT / ".state"
LOGS = STATE / "logs"
MODELS = STATE / "models"
BUCKET = "models"
HOST = "127.0.0.1"
READY_DEADLINE_S = 300.0
BROKER_PORT = ("BROKER_PORT", broker.DEFAULT_PORT)
BROKER_STOP_GRACE_S = 60.0  # deliver what the broker holds (audit still up) before stopping
REPLIES = LOGS / "replies.jsonl"



def local_functions(root: Path) -> dict[str, Local]:
    """How ``make run`` serves each function under ``root/functions``, from its contract."""
    return {name: spec.local for name, spec in discover(root).items() if spec.local is not None}


LOCAL = local_functions(ROOT)
# name -> (port env, default port, S3 key of its model or None)
FUNCTIONS = {name: (f"{name.upper()}_PORT", local.port, local.model)
             for name, local in LOCAL.items()}
# local model files made by other scripts (made here if missing and the script exists)
LOCAL_MODELS = {
    "tiny-llama.gguf": "make_tiny_model.py",
    "all-minilm-l6-v2-f16.gguf": "convert_minilm.py",
}


def log(msg: str) -> None:
    print(f"run: {msg}", file=sys.stderr, flush=True)


def function_server(name: str, port: int, env: dict[str, str]) -> procs.ServerProcess:
    """One function under gunicorn (gthread, 1 worker) from its own folder, as its container
    runs it; it dies with this runner."""
    return procs.gunicorn_server(name, port, host=HOST, conf=os.environ.get("GUNICORN_CONF"),
                                 env={"PYTHONUNBUFFERED": "1", **env}, name=name,
                                 log_path=LOGS / f"{name}.log", die_with_parent=True)


def knative_function(name: str, port: int, key: str | None, spec: knative_pod.RevisionSpec,
                     minio, ferretdb, sink_url: str) -> knative_pod.LocalService:
    """`KNATIVE=1`: one function in its pod behind its queue-proxy, published on ``port``; the
    local services it calls are relayed into the pod's namespace."""
    svc = knative_pod.LocalService(name, spec, host=HOST, port=port, log_dir=LOGS)
    try:
        db, sink = ferretdb, ""
        if key:
            s3_host, s3_port = svc.reach(minio.host, minio.port)
            s3 = SimpleNamespace(endpoint_url=f"http://{s3_host}:{s3_port}",
                                 access_key=minio.access_key, secret_key=minio.secret_key)
            bus = urlsplit(sink_url)
            sink_host, sink_port = svc.reach(bus.hostname, bus.port)
            sink = f"http://{sink_host}:{sink_port}"
        else:
            s3 = minio  # audit calls no S3
            db_host, db_port = svc.reach(ferretdb.host, ferretdb.port)
            db = SimpleNamespace(uri=f"mongodb://{db_host}:{db_port}/")
        return svc.start({"PYTHONUNBUFFERED": "1",
                          **function_env(name, key, s3, db, bool(sink), sink)})
    except BaseException:
        svc.stop()
        raise


def local_models() -> dict[str, Path]:
    """S3 key -> local file of every model to upload."""
    found = {"smollm2-135m-instruct-q4_1.gguf": smollm2_path()}
    for name, script in LOCAL_MODELS.items():
        path, maker = MODELS / name, ROOT / "scripts" / script
        if not path.exists() and maker.exists():
            log(f"making {path.relative_to(ROOT)} with scripts/{script}")
            subprocess.run([sys.executable, str(maker), "--out", str(path)], check=True,
                           cwd=ROOT, timeout=1800)
        if path.exists():
            found[name] = path
    return found


def upload_models(client, models: dict[str, Path]) -> None:
    """Upload each model unless the bucket already holds it with the same sha256."""
    upload_model.ensure_bucket(client, BUCKET)
    for key, path in models.items():
        digest = upload_model.sha256_file(str(path))
        try:
            head = client.head_object(Bucket=BUCKET, Key=key)
            if head.get("Metadata", {}).get("sha256") == digest:
                log(f"s3://{BUCKET}/{key} is up to date")
                continue
        except client.exceptions.ClientError:
            pass
        upload_model.upload(client, str(path), BUCKET, key, progress=True, sha256=digest)


def function_env(name: str, key: str | None, minio, ferretdb, have_sink: bool,
                 sink_url: str) -> dict[str, str]:
    """A function's environment: FerretDB's URI for one that needs MongoDB, else its events go
    to ``sink_url`` (K_SINK: the local broker in `make run`) when ``have_sink``."""
    env = {"FUNCTION_NAME": name, "MODEL_CACHE_DIR": str(STATE / "cache"),
           "S3_ENDPOINT_URL": minio.endpoint_url, "AWS_ACCESS_KEY_ID": minio.access_key,
           "AWS_SECRET_ACCESS_KEY": minio.secret_key, "AWS_REGION": "us-east-1"}
    if key:
        env["MODEL_URI"] = f"s3://{BUCKET}/{key}"
    if name == "embed":  # the thread policy of its func.yaml (docs/deploy.md "Threads and CPU")
        env["OMP_WAIT_POLICY"] = "passive"
    if LOCAL[name].mongodb:
        env["MONGODB_URI"] = ferretdb.uri
    elif have_sink:
        env["K_SINK"] = sink_url
    return env


def served_model(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5.0) as resp:
            return json.load(resp)["data"][0]["id"]
    except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
        return "<model>"


def start_broker(ports: dict[str, int], present: list[str]) -> broker.Broker:
    """The local broker on BROKER_PORT (a thread of this process): the Triggers of eventing/
    whose subscribers run here, plus one that appends reply events to REPLIES."""
    handler = logging.FileHandler(LOGS / "broker.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    broker.log.addHandler(handler)
    broker.log.setLevel(logging.INFO)
    broker.log.propagate = False
    local = {name: f"http://{HOST}:{ports[name]}" for name in present}
    triggers = broker.load_triggers(local) + [broker.replies_trigger(REPLIES)]
    port = int(os.environ.get(*BROKER_PORT))
    try:
        return broker.Broker(triggers, host=HOST, port=port).start()
    except OSError as err:
        raise procs.ServerError(f"broker: cannot listen on {HOST}:{port} ({err}); "
                                f"set BROKER_PORT") from None


REQUEST_EVENT = "dev.llmfn.chat.completion.requested.v1"


def print_usage(running: dict[str, procs.ServerProcess], bus: broker.Broker | None = None
                ) -> None:
    lines = ["", "llmfn is running (Ctrl-C stops everything):"]
    if bus is not None:
        lines += [f"  {'broker':9s} {bus.url}   (log .state/logs/broker.log)",
                  f"  {'':9s} Triggers: {', '.join(q.trigger.name for q in bus.queues)}"]
    for name, fn in running.items():
        via = " through its queue-proxy" if isinstance(fn, knative_pod.LocalService) else ""
        lines.append(f"  {name:9s} {fn.url}   (log {fn.log_path.relative_to(ROOT)}){via}")
    if "generate" in running:
        url = running["generate"].url
        model = served_model(url)
        lines += ["", "Try it:",
                  f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\",
                  f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
                  f"\"content\": \"Say hi\"}}], \"max_tokens\": 32}}'",
                  "",
                  "  .venv/bin/python - <<'EOF'",
                  "  from openai import OpenAI",
                  f"  client = OpenAI(base_url='{url}/v1', api_key='unused')",
                  f"  for chunk in client.chat.completions.create(model='{model}', stream=True,",
                  "          messages=[{'role': 'user', 'content': 'Say hi'}], max_tokens=32):",
                  "      print(chunk.choices[0].delta.content or '', end='', flush=True)",
                  "  EOF"]
    if "embed" in running:
        url = running["embed"].url
        lines += ["", f"  curl -s {url}/v1/embeddings -H 'Content-Type: application/json' "
                      f"-d '{{\"input\": \"hello\"}}'"]
    if bus is not None and bus.matching(REQUEST_EVENT):
        lines += ["", "A request event through the broker, as in the cluster (202 = queued):",
                  f"  curl -si {bus.url} -H 'ce-specversion: 1.0' \\",
                  "    -H \"ce-id: curl-$(date +%s%N)\" -H 'ce-source: /local/curl' \\",
                  f"    -H 'ce-type: {REQUEST_EVENT}' -H 'Content-Type: application/json' \\",
                  "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                  "\"max_tokens\": 16}'",
                  f"  Replies: tail -f {REPLIES.relative_to(ROOT)}   (deliveries: "
                  f"tail -f .state/logs/broker.log)"]
        if "audit" in running:
            lines.append(f"  Counted by audit: curl -s {running['audit'].url}/kpis")
    print("\n".join(lines) + "\n", flush=True)


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    LOGS.mkdir(parents=True, exist_ok=True)
    services.ensure_binaries()
    minio = services.MinioServer(STATE / "minio", HOST, int(os.environ.get("MINIO_PORT", 9000)),
                                 log_path=LOGS / "minio.log")
    ferretdb = services.FerretDBServer(STATE / "ferretdb", HOST,
                                       int(os.environ.get("FERRETDB_PORT", 27017)),
                                       log_path=LOGS / "ferretdb.log")
    running: dict[str, procs.ServerProcess] = {}
    bus: broker.Broker | None = None
    try:
        for server in (minio, ferretdb):
            server.start()
        for server in (minio, ferretdb):
            server.wait_ready(deadline_s=60)
        log(f"MinIO {minio.endpoint_url} (user {minio.access_key}), FerretDB {ferretdb.uri}")
        upload_models(minio.client(), local_models())

        present = [n for n in FUNCTIONS if (ROOT / "functions" / n / "function/wsgi.py").exists()]
        ports = {n: int(os.environ.get(FUNCTIONS[n][0], FUNCTIONS[n][1])) for n in FUNCTIONS}
        bus = start_broker(ports, present)  # before the functions: their K_SINK
        log(f"broker on {bus.url} (log {LOGS.relative_to(ROOT)}/broker.log)")
        knative = os.environ.get("KNATIVE", "") == "1"
        specs = knative_pod.revision_specs() if knative else {}
        # those without a model (audit) first, so the sink is up before the first inference event
        for name in sorted(present, key=lambda n: FUNCTIONS[n][2] is not None):
            if knative:
                running[name] = knative_function(
                    name, ports[name], FUNCTIONS[name][2], specs[name], minio, ferretdb,
                    bus.url)
                log(f"started {name} behind queue-proxy on {running[name].url} "
                    f"(pod {running[name].netns.pod_addr}, netns {running[name].netns.name})")
                continue
            env = function_env(name, FUNCTIONS[name][2], minio, ferretdb, True, bus.url)
            running[name] = function_server(name, ports[name], env).start()
            log(f"started {name} on {running[name].url}")
        for name, fn in running.items():
            fn.wait_ready(deadline_s=READY_DEADLINE_S)
            log(f"{name} ready")
        print_usage(running, bus)
        while True:  # until Ctrl-C / SIGTERM, or a process dies
            for server in (minio, ferretdb, *running.values()):
                if not server.running:
                    log(f"{server.name} exited; log {server.log_path}:\n{server.log_tail()}")
                    return 1
            if not bus.running:
                log("the broker's ingress thread exited; see .state/logs/broker.log")
                return 1
            time.sleep(1.0)
    except Stop as sig:
        log(f"{sig}: stopping")
        return 0
    except procs.ServerError as err:  # services.ServiceError included
        log(str(err))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # functions with a model first (they flush events to the broker), then the broker (it
        # delivers what it holds to audit), then the others (audit), then storage
        for name in [n for n in running if FUNCTIONS[n][2] is not None]:
            running[name].stop(grace_s=40)
            log(f"stopped {name}")
        if bus is not None:
            lost = bus.stop(grace_s=BROKER_STOP_GRACE_S)
            log("stopped the broker" + (f" ({lost} event(s) undelivered)" if lost else ""))
        for name in [n for n in running if FUNCTIONS[n][2] is None]:
            running[name].stop(grace_s=40)
            log(f"stopped {name}")
        for server in (ferretdb, minio):
            server.stop()
        log("stopped MinIO and FerretDB")


if __name__ == "__main__":
    sys.exit(main())
