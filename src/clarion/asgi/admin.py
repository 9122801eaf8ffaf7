"""The admin page: ``/admin`` and its files, served with ``admin = true`` only.

The page and its modules are static and hold no data: everything it shows comes from the server
API, which it calls with the API key the operator types in (kept in the tab's session storage,
sent in the ``Authorization`` header, never in a URL), and from the hub's metrics channel, read
over a WebSocket that connects with the same key (see :mod:`clarion.core.operator`).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clarion.core.hub import Hub
from clarion.errors import NotFound

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".LICENSE": "text/plain; charset=utf-8",
}
# Nothing but the hub itself: no inline script, no other origin, no framing (clickjacking of
# the action buttons), and no referrer leaving the page.
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _read(folder: Traversable, prefix: str = "") -> dict[str, tuple[bytes, str]]:
    """Every file under ``folder`` by its path below it, with its media type."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            out.update(_read(entry, name + "/"))
            continue
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in TYPES:
            out[name] = (entry.read_bytes(), TYPES[suffix])
    return out


def admin_routes(hub: Hub) -> list[BaseRoute]:
    """The page's routes; none when ``admin`` is off, so ``/admin`` is a 404 like any path."""
    if not hub.settings.admin:
        return []
    assets = _read(files("clarion") / "static" / "admin")

    def serve(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound(f"no such file: /admin/{name}")
        body, media_type = found
        return Response(body, media_type=media_type, headers=HEADERS)

    async def page(request: Request) -> Response:
        return serve("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if not name:
            # The page links its files relative to ``/admin``; under ``/admin/`` they would miss.
            root = request.scope.get("root_path", "")
            return RedirectResponse(f"{root}/admin", status_code=308, headers=HEADERS)
        return serve(name)

    return [
        Route("/admin", page, methods=["GET"]),
        Route("/admin/{name:path}", asset, methods=["GET"]),
    ]
