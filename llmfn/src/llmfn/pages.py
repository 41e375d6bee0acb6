"""The HTML pages every function serves beside its API: static files, no build step, no CDN.

- ``GET /docs`` (every function): its ``/openapi.json`` rendered by ``static/docs.js``;
- the page its contract names (``llmfn.contract.Page``), e.g. ``GET /`` of generate and embed: a
  playground on their own ``/v1`` API (``POST /`` stays the CloudEvents route: same rule, another
  method); ``GET /dashboard`` of audit: KPI charts from ``/kpis`` and ``/kpis/timeseries``,
  drawn with the vendored uPlot (``static/vendor/uplot``, MIT).

Pages and their files are public (:func:`llmfn.webapp.public`): a browser loads them without a
bearer key; the API calls they make carry the key the page asks for when ``API_KEYS`` is set
(a 401 opens the key prompt, ``static/common.js``). Everything the pages load comes from this
package's ``static/`` folder at ``/static/...`` (endpoint ``static``, as Flask names its own), so
they work offline in the cluster; their Content-Security-Policy allows nothing but this origin.
All paths in the pages are relative, so they also work behind a path prefix.
"""
from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Mapping
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.security import safe_join

from . import errors
from .contract import Page
from .webapp import _PUBLIC, public

STATIC = Path(__file__).with_name("static")
STATIC_URL = "/static"

# Only this origin: an accidental CDN reference fails loudly (a console error) in every test.
# uPlot sets element styles from script (CSSOM), which style-src does not restrict; the pages'
# own markup has a few style attributes, hence 'unsafe-inline' for styles only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'none'")

DOCS = Page("/docs", STATIC / "docs.html", "docs")


def register(app: Flask, *pages: Page) -> None:
    """Serve the static files, ``/docs`` and ``pages`` (a function's contract names its page)
    on ``app``, all without a bearer key."""
    _static(app)
    for page in (DOCS, *pages):
        public(app, page.rule, page.endpoint, _page_view(page.file))


def _page_view(path: Path):
    if not path.is_file():
        raise FileNotFoundError(path)

    def view() -> Response:
        return with_headers(file_response(path, "text/html"))

    view.__name__ = f"page_{path.stem}"
    return view


def with_headers(resp: Response) -> Response:
    """The page headers: CSP (this origin only), no sniffing, no framing."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def file_response(path: Path, mimetype: str | None = None) -> Response:
    """A file as an ordinary response (ETag, revalidated each time; 304 when unchanged).

    Not ``send_file``: its direct-passthrough body is never closed through the response, so
    ``call_on_close`` callbacks (the base app's in-flight count, which the drain at SIGTERM
    waits on) would never run. The files are small (the largest, uPlot, is 51 kB).
    """
    data = path.read_bytes()
    ctype = mimetype or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    resp = Response(data, mimetype=ctype)
    resp.set_etag(hashlib.sha256(data).hexdigest()[:32])
    resp.cache_control.no_cache = True
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.make_conditional(request)  # in place: 304 and no body when the ETag matches
    return resp


def _static_view(filename: str) -> Response:
    path = safe_join(str(STATIC), filename)
    if path is None or not Path(path).is_file():
        raise errors.NotFound("Unknown URL: no such route.")
    return file_response(Path(path))


def _static(app: Flask) -> None:
    """``/static/<path>`` from this package's ``static/`` folder, as endpoint ``static``.

    Flask registers ``static`` itself when the app's root path has a ``static`` folder; then
    that rule is served by this view instead of being added twice.
    """
    if "static" in app.view_functions:
        app.view_functions["static"] = _static_view
        app.extensions[_PUBLIC].add("static")
    else:
        public(app, f"{STATIC_URL}/<path:filename>", "static", _static_view)


def static_files() -> Mapping[str, Path]:
    """Every file the pages may load, by its path under ``/static/`` (for tests and packaging)."""
    return {p.relative_to(STATIC).as_posix(): p for p in sorted(STATIC.rglob("*")) if p.is_file()}
