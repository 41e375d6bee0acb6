#!/usr/bin/env python3
"""`make run`: the whole stack on this machine, stopped cleanly by Ctrl-C.

Starts MinIO and FerretDB, uploads the models to ``s3://models/`` with their sha256 metadata,
then runs each function that exists (``functions/<name>/function/wsgi.py``) with gunicorn the
way its container does, waits for ``/health/readiness`` and prints how to call it.
State and logs: ``.state/`` (logs in ``.state/logs/``). Ports: MINIO_PORT, FERRETDB_PORT,
GENERATE_PORT, EMBED_PORT, AUDIT_PORT. GUNICORN_CONF overrides the gunicorn config file.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402
import upload_model  # noqa: E402
from model_files import smollm2_path  # noqa: E402

ROOT = services.REPO_ROOT
STATE = ROOT / ".state"
LOGS = STATE / "logs"
MODELS = STATE / "models"
BUCKET = "models"
HOST = "127.0.0.1"
READY_DEADLINE_S = 300.0

# name -> (port env, default port, S3 key of its model or None)
FUNCTIONS = {
    "generate": ("GENERATE_PORT", 8081, "smollm2-135m-instruct-q4_1.gguf"),
    "embed": ("EMBED_PORT", 8082, "all-minilm-l6-v2-f16.gguf"),
    "audit": ("AUDIT_PORT", 8083, None),
}
# local model files made by other scripts (made here if missing and the script exists)
LOCAL_MODELS = {
    "tiny-llama.gguf": "make_tiny_model.py",
    "all-minilm-l6-v2-f16.gguf": "convert_minilm.py",
}


def log(msg: str) -> None:
    print(f"run: {msg}", file=sys.stderr, flush=True)


class FunctionServer(services._Server):
    """One function under gunicorn (gthread, 1 worker) from its own folder."""

    def __init__(self, name: str, port: int, env: dict[str, str]):
        super().__init__(STATE / "run" / name, HOST, port, log_path=LOGS / f"{name}.log")
        self.name = name
        self.extra_env = env

    @property
    def binary(self) -> Path:
        return ROOT / ".venv" / "bin" / "gunicorn"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        conf = os.environ.get("GUNICORN_CONF") or str(ROOT / "llmfn/src/llmfn/gunicorn_conf.py")
        return [str(self.binary), "-c", conf,
                "--chdir", str(ROOT / "functions" / self.name), "function.wsgi:app",
                "--bind", f"{self.host}:{self.port}"]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}

    def _check_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/readiness", timeout=2.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


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


def function_env(name: str, key: str | None, minio, ferretdb, have_audit: bool,
                 audit_url: str) -> dict[str, str]:
    env = {"FUNCTION_NAME": name, "MODEL_CACHE_DIR": str(STATE / "cache"),
           "S3_ENDPOINT_URL": minio.endpoint_url, "AWS_ACCESS_KEY_ID": minio.access_key,
           "AWS_SECRET_ACCESS_KEY": minio.secret_key, "AWS_REGION": "us-east-1"}
    if key:
        env["MODEL_URI"] = f"s3://{BUCKET}/{key}"
    if key:  # generate and embed: the thread policy of their func.yaml
        env["OMP_WAIT_POLICY"] = "passive"  # docs/deploy.md "Threads and CPU"
    if name == "audit":
        env["MONGODB_URI"] = ferretdb.uri
    elif have_audit:
        env["K_SINK"] = audit_url
    return env


def served_model(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5.0) as resp:
            return json.load(resp)["data"][0]["id"]
    except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
        return "<model>"


def print_usage(running: dict[str, FunctionServer]) -> None:
    lines = ["", "llmfn is running (Ctrl-C stops everything):"]
    for name, fn in running.items():
        lines.append(f"  {name:9s} {fn.url}   (log {fn.log_path.relative_to(ROOT)})")
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
    running: dict[str, FunctionServer] = {}
    try:
        for server in (minio, ferretdb):
            server.start()
        for server in (minio, ferretdb):
            server.wait_ready(deadline_s=60)
        log(f"MinIO {minio.endpoint_url} (user {minio.access_key}), FerretDB {ferretdb.uri}")
        upload_models(minio.client(), local_models())

        present = [n for n in FUNCTIONS if (ROOT / "functions" / n / "function/wsgi.py").exists()]
        ports = {n: int(os.environ.get(FUNCTIONS[n][0], FUNCTIONS[n][1])) for n in FUNCTIONS}
        audit_url = f"http://{HOST}:{ports['audit']}/"
        # audit first, so the sink is up before the first inference event
        for name in sorted(present, key=lambda n: n != "audit"):
            env = function_env(name, FUNCTIONS[name][2], minio, ferretdb, "audit" in present,
                               audit_url)
            running[name] = FunctionServer(name, ports[name], env).start()
            log(f"started {name} on {running[name].url}")
        for name, fn in running.items():
            fn.wait_ready(deadline_s=READY_DEADLINE_S)
            log(f"{name} ready")
        print_usage(running)
        while True:  # until Ctrl-C / SIGTERM, or a process dies
            for server in (minio, ferretdb, *running.values()):
                if server.proc is None or server.proc.poll() is not None:
                    log(f"{server.name} exited; log {server.log_path}:\n{server.log_tail()}")
                    return 1
            time.sleep(1.0)
    except Stop as sig:
        log(f"{sig}: stopping")
        return 0
    except services.ServiceError as err:
        log(str(err))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # inference functions first (they flush events to audit), then audit, then storage
        order = [n for n in running if n != "audit"] + [n for n in running if n == "audit"]
        for name in order:
            running[name].stop(grace_s=40)
            log(f"stopped {name}")
        for server in (ferretdb, minio):
            server.stop()
        log("stopped MinIO and FerretDB")


if __name__ == "__main__":
    sys.exit(main())
