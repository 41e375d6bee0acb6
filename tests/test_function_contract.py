"""A fourth function plugs in with its own folder and its deploy/eventing manifests only.

A toy function (no model) is written to a temporary tree beside links to the real three: its
``function/`` package (its contract ``SPEC`` in func.py, its API, its page), its func.yaml, a
Knative Service in deploy/ and a Trigger in eventing/. ``make run``'s discovery
(scripts/run.py), the manifest tests' (tests/support/manifests.py) and the pages find it from
its contract, and llmfn serves its API, its request events (a direct call of its route's
handler) and its page, though no file of llmfn names it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent

from llmfn.contract import FunctionSpec, Local, discover
from llmfn.runtime import create_runtime
from scripts import run
from tests.support import manifests
from tests.support.models import model_file

ROOT = Path(__file__).resolve().parents[1]
TOY_TYPE = "dev.llmfn.toy.echo.requested.v1"

FILES = {
    "functions/toy/func.yaml": """\
        specVersion: 0.36.0
        name: toy
        runtime: python
        invoke: http
        run:
          envs:
            - name: FUNCTION_NAME
              value: toy
        """,
    "functions/toy/function/__init__.py": '''\
        """The toy function: echoes what it is sent."""
        from .func import SPEC, new

        __all__ = ["SPEC", "new"]
        ''',
    "functions/toy/function/func.py": '''\
        """The toy function's contract."""
        from __future__ import annotations

        from dataclasses import dataclass
        from pathlib import Path
        from typing import Mapping

        from llmfn import routes
        from llmfn.contract import FunctionSpec, Local, Page, RequestEvent, Worker
        from llmfn.function import LLMFunction
        from llmfn.settings import build, setting


        @dataclass(frozen=True)
        class ToySettings:
            prefix: str = setting("TOY_PREFIX", "echo: ", "put before each answer")

            @classmethod
            def from_mapping(cls, env: Mapping[str, str]) -> "ToySettings":
                return build(cls, env)


        def register(app, runtime, settings: ToySettings) -> Worker:
            def echo(inbound: routes.Inbound) -> routes.Result:
                text = inbound.body().get("text", "")
                return routes.Result({"id": inbound.origin.rid, "text": settings.prefix + text},
                                     headers={"X-Request-Id": inbound.origin.rid})

            routes.add(app, "/v1/echo", "echo", echo)
            return Worker()


        SPEC = FunctionSpec(
            name="toy", routes=register, settings=ToySettings.from_mapping,
            defaults={"QUEUE_SIZE": "2"},
            events={"dev.llmfn.toy.echo.requested.v1": RequestEvent("/v1/echo",
                                                                    "dev.llmfn.toy.echo.v1")},
            page=Page("/", Path(__file__).with_name("toy.html")),
            local=Local(port=8084))


        def new() -> LLMFunction:
            return LLMFunction(SPEC)
        ''',
    "functions/toy/function/wsgi.py": '''\
        from llmfn.runtime import wsgi_app

        from .func import SPEC

        app = wsgi_app(SPEC)
        ''',
    "functions/toy/function/toy.html": """\
        <!doctype html>
        <html><head><title>toy</title><script src="static/common.js"></script></head>
        <body><h1>toy echo</h1></body></html>
        """,
    "deploy/toy.yaml": """\
        apiVersion: serving.knative.dev/v1
        kind: Service
        metadata:
          name: toy
        spec:
          template:
            spec:
              containers:
                - image: toy
        """,
    "eventing/trigger-toy-echo.yaml": """\
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata:
          name: toy-echo-requests
        spec:
          broker: llmfn
          filters:
            - exact:
                type: dev.llmfn.toy.echo.requested.v1
          subscriber:
            ref:
              apiVersion: serving.knative.dev/v1
              kind: Service
              name: toy
        """,
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The repository's three functions (linked) and the toy's files, nothing else."""
    root = tmp_path_factory.mktemp("tree")
    (root / "functions").mkdir()
    for name in ("generate", "embed", "audit"):
        (root / "functions" / name).symlink_to(ROOT / "functions" / name)
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def toy(tree) -> FunctionSpec:
    return discover(tree)["toy"]


def test_make_run_finds_it(tree):
    local = run.local_functions(tree)
    assert sorted(local) == ["audit", "embed", "generate", "toy"]
    assert local["toy"] == Local(port=8084)
    assert {name: spec.port for name, spec in run.local_functions(ROOT).items()} == {
        name: port for name, (_env, port, _key) in run.FUNCTIONS.items()}


def test_the_manifest_tests_find_it(tree):
    specs = manifests.function_specs(tree)
    assert sorted(specs) == ["audit", "embed", "generate", "toy"]
    assert specs["toy"].model is None and specs["toy"].event_types == {TOY_TYPE}
    (trigger,) = yaml.safe_load_all((tree / "eventing" / "trigger-toy-echo.yaml").read_text())
    assert trigger["spec"]["subscriber"]["ref"]["name"] == "toy"
    assert {f["exact"]["type"] for f in trigger["spec"]["filters"]} <= specs["toy"].event_types
    # the repository's own: the three, as the manifest tests check them
    assert sorted(manifests.FUNCTIONS) == ["audit", "embed", "generate"]


def test_llmfn_serves_its_page_api_and_request_events(toy):
    rt = create_runtime(toy, {"TOY_PREFIX": "> ", "API_KEYS": "k"})
    client = rt.app.test_client()
    try:
        page = client.get("/")
        assert page.status_code == 200 and "toy echo" in page.get_data(as_text=True)
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert client.get("/docs").status_code == 200
        assert client.get("/static/common.js").status_code == 200
        assert client.post("/v1/echo", json={"text": "hi"}).status_code == 401
        r = client.post("/v1/echo", json={"text": "hi"}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.get_json()["text"] == ">hi"  # (settings are stripped)
        assert "/v1/models" not in {r.rule for r in rt.app.url_map.iter_rules()}  # no model
        event = CloudEvent({"type": TOY_TYPE, "source": "/test", "id": "e1",
                            "datacontenttype": "application/json"}, {"text": "yo"})
        msg = to_binary_event(event)
        resp = client.post("/", headers=dict(msg.headers), data=msg.body)  # public: no key
        assert resp.status_code == 200, resp.get_data(as_text=True)
        reply = from_http_event(HTTPMessage(headers=dict(resp.headers), body=resp.get_data()))
        assert reply.get_type() == "dev.llmfn.toy.echo.v1"
        assert reply.get_source() == "/llmfn/toy" and reply.get_data()["text"] == ">yo"
        assert rt.function == "toy" and rt.server.queue_size == 2  # its defaults
        assert rt.ready() == (True, "ready")
    finally:
        rt.stop()


# Records, per thread, each import as it starts and as it ends ("+name" / "-name") and writes
# them to a file: stderr (python -X importtime) is no witness, as llama-cpp-python points fd 2 at
# /dev/null while the loader thread loads the model, and lines of the main thread vanish.
IMPORT_SPY = textwrap.dedent("""
    import _frozen_importlib as bootstrap, json, sys, threading
    events, real = [], bootstrap._find_and_load  # every first load of a module passes here
    def spy(name, import_):
        thread = threading.current_thread().name
        events.append((thread, "+" + name))
        try:
            return real(name, import_)
        finally:
            events.append((thread, "-" + name))
    bootstrap._find_and_load = spy
    import function
    json.dump(events, open(sys.argv[1], "w"))
""")


@pytest.mark.parametrize("name, model, engine", [
    ("generate", "tiny-llama.gguf", "make_tiny_model.py"),
    ("embed", "all-minilm-l6-v2-f16.gguf", "convert_minilm.py"),
])
def test_the_weight_fetch_starts_before_the_web_stack_is_imported(name, model, engine, tmp_path):
    """Importing a model function's package (as func-python and gunicorn do) runs its
    ``early`` module first: the fetch starts, the loader's imports (llama_cpp) run inside it,
    and only then the web stack (``function.func``: Flask) is imported."""
    env = {**os.environ, "MODEL_URI": f"file://{model_file(model, engine)}",
           "MODEL_CACHE_DIR": str(tmp_path), "OMP_WAIT_POLICY": "passive"}
    record = tmp_path / "imports.json"
    out = subprocess.run([sys.executable, "-c", IMPORT_SPY, str(record)],
                         cwd=ROOT / "functions" / name, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    main = [e for thread, e in json.loads(record.read_text()) if thread == "MainThread"]
    early = main.index("+function.early"), main.index("-function.early")
    assert main.index("+llama_cpp") in range(*early)  # the loader's imports, inside early
    web = [main.index(f"+{m}") for m in ("function.func", "flask") if f"+{m}" in main]
    assert web and min(web) > early[1], main[early[1] - 3:early[1] + 3]
