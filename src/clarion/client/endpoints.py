"""Where a hub's endpoints are, derived from the one URL a user gives."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

_HTTP_OF = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_OF = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


@dataclass(frozen=True, slots=True)
class Endpoints:
    """``http`` is the hub's base URL (no trailing slash); every endpoint hangs below it."""

    http: str
    ws: str

    @classmethod
    def parse(cls, url: str) -> Endpoints:
        """Accept ``http(s)://host[:port][/prefix]`` or ``ws(s)://host[:port][/prefix]/ws``.

        A WebSocket URL names the ``/ws`` endpoint itself; the prefix before it is where a host
        application mounted the hub, and the HTTP endpoints live under the same prefix.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _HTTP_OF or not parts.netloc:
            raise ValueError(f"hub URL must be http(s):// or ws(s):// with a host, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("hub URL must not carry a query or fragment")
        path = parts.path.rstrip("/")
        if scheme in ("ws", "wss") and path.endswith("/ws"):
            path = path[: -len("/ws")]
        http = urlunsplit((_HTTP_OF[scheme], parts.netloc, path, "", ""))
        ws = urlunsplit((_WS_OF[scheme], parts.netloc, path + "/ws", "", ""))
        return cls(http, ws)

    def url(self, path: str) -> str:
        """The absolute URL of an HTTP endpoint such as ``/api/publish``."""
        return self.http + path

    def doubt(self) -> str:
        """What an endpoint that is not there most often means: the hub's URL without the path
        an application mounted it at."""
        return f"is {self.http} the hub's URL, with the path an application mounted it at?"
