"""The dashboard: one HTML page, one script and one style sheet, served by the gateway itself.

``GET /`` is the page and ``GET /dashboard/<file>`` its files; nothing is loaded from elsewhere and
nothing is built. They hold no data, so they answer without a token (``OPEN_PATHS``); the page
asks for the token when a data route answers 401, keeps it in the tab's ``sessionStorage`` and
sends it as a Bearer header. Every URL the page uses is relative, so it works behind a proxy that
serves the gateway under a path prefix. The Content-Security-Policy allows only this origin and
no inline script.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

HERE: Final = Path(__file__).parent
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
PATHS: Final = frozenset(FILES)
"""The page and its files: they answer without a token (they hold no data)."""

__all__ = ["FILES", "PATHS", "asset", "page"]


@functools.cache
def _content(name: str) -> bytes:
    return (HERE / name).read_bytes()


def _serve(path: str) -> Response:
    name, media_type = FILES[path]
    return Response(_content(name), media_type=media_type, headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    """``GET /``: the dashboard, one HTML page (its script and styles are `/dashboard/app.js`,
    `/dashboard/app.css`). It holds no data: it reads the JSON and event-stream routes with the
    token it asks for. Answers without a token."""
    return _serve("/")


async def asset(request: Request) -> Response:
    """``GET /dashboard/<file>``: the dashboard's script, styles and icon. Answers without a token."""
    path = request.url.path
    return _serve(next((key for key in FILES if key != "/" and path.endswith(key)), "/"))
