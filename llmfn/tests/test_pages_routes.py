"""llmfn.pages: the HTML pages and their static files on the base app (the browser test of the
real pages is tests/test_pages.py)."""
from __future__ import annotations

import re

import pytest
from flask import Flask

from llmfn import pages
from llmfn.auth import BearerAuth
from llmfn.contract import Page
from llmfn.metrics import HTTPMetrics
from llmfn.webapp import create_base_app, public

PLAYGROUND = {name: Page("/", pages.STATIC / f"{name}.html", "playground")
              for name in ("generate", "embed")}
DASHBOARD = Page("/dashboard", pages.STATIC / "dashboard.html", "dashboard")


class Ready:
    def ready(self):
        return True, "ready"

    def alive(self):
        return True, "alive"


def app_with(register, auth=True) -> Flask:
    app = create_base_app("t", max_request_bytes=1 << 20, probes=Ready(), metrics=HTTPMetrics(),
                          auth=BearerAuth((b"k1",)) if auth else None)
    public(app, "/", "events", lambda: {"status": "event"}, methods=("POST",))
    app.add_url_rule("/v1/secret", "secret", lambda: {"ok": True})
    register(app)
    return app


@pytest.mark.parametrize("register, rule, marker", [
    (lambda app: pages.register(app, PLAYGROUND["generate"]), "/", "generate.js"),
    (lambda app: pages.register(app, PLAYGROUND["embed"]), "/", "embed.js"),
    (lambda app: pages.register(app, DASHBOARD), "/dashboard", "dashboard.js"),
])
def test_pages_load_without_a_key_and_the_api_still_needs_one(register, rule, marker):
    c = app_with(register).test_client()
    for path in (rule, "/docs"):
        r = c.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html", path
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert marker in c.get(rule).get_data(as_text=True)
    assert c.get("/static/common.js").status_code == 200
    assert c.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert c.get("/v1/secret").status_code == 401  # the pages opened nothing else
    assert c.get("/static/../pages.py").status_code == 404
    assert c.get("/static/missing.js").status_code == 404


def test_get_page_beside_post_events_on_one_rule():
    c = app_with(lambda app: pages.register(app, PLAYGROUND["generate"])).test_client()
    assert c.post("/").get_json() == {"status": "event"}
    assert c.get("/").mimetype == "text/html"
    assert c.put("/", headers={"Authorization": "Bearer k1"}).status_code == 405


def test_flask_static_route_is_reused_when_present(tmp_path, monkeypatch):
    """An app whose root path has a `static` folder already has Flask's `static` endpoint:
    it is pointed at the pages' folder and made public, not added twice."""
    (tmp_path / "static").mkdir()
    monkeypatch.chdir(tmp_path)  # Flask("t") roots an unknown module at the working directory
    c = app_with(lambda app: pages.register(app, DASHBOARD)).test_client()
    assert c.get("/static/dashboard.js").status_code == 200


def test_every_referenced_file_exists_and_nothing_is_remote():
    """The pages load only their own files: every src/href of the HTML is a relative path to
    a file of static/ (or a page), nothing from another origin (no CDN)."""
    files = pages.static_files()
    assert {"common.js", "pages.css", "docs.html", "vendor/uplot/uPlot.iife.min.js",
            "vendor/uplot/LICENSE"} <= set(files)
    for name in ("generate.html", "embed.html", "dashboard.html", "docs.html"):
        html = files[name].read_text(encoding="utf-8")
        refs = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert refs, name
        for ref in refs:
            assert not re.match(r"^(?:[a-z]+:)?//", ref, re.I), (name, ref)
            if ref.startswith("static/"):
                assert ref.removeprefix("static/") in files, (name, ref)
            else:
                assert ref in {"./", "docs", "dashboard", "openapi.json", "data:,"}, (name, ref)
    for name, path in files.items():
        if name.endswith(".js") and not name.startswith("vendor/"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"https?://", text), name
            assert "innerHTML" not in text, name  # text is set as text


def test_files_are_ordinary_closable_responses_with_etags():
    """Pages and files are plain responses, not send_file's direct passthrough (whose body is
    never closed through the response: call_on_close, e.g. the in-flight count the drain at
    SIGTERM waits on, would never run); an unchanged file revalidates as 304."""
    app = app_with(lambda app: pages.register(app, DASHBOARD))
    closed = []

    @app.after_request
    def _mark(resp):
        resp.call_on_close(lambda: closed.append(resp.status_code))
        return resp

    c = app.test_client()
    for path in ("/dashboard", "/static/vendor/uplot/uPlot.iife.min.js"):
        r = c.get(path)
        assert r.status_code == 200 and not r.direct_passthrough
        r.close()
        etag = r.headers["ETag"]
        again = c.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304
        again.close()
    assert closed == [200, 304, 200, 304]
    assert c.get("/static/uPlot.iife.min.js").status_code == 404
    assert c.get("/static/vendor/uplot/uPlot.min.css").mimetype == "text/css"
