"""The hub over plain HTTP: publish, history and presence requests, and the shared client.

A client with an API key (a backend) calls the server API, ``/api/*``, with
``Authorization: apikey <key>``; any other calls the client API, ``/client/*``, with its
connection token as ``Authorization: Bearer <token>``, under the rules the same ops meet over
WebSocket. The SSE and poll streams carry the connection token too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from clarion.client.bounds import UNCOMPRESSED, Dropped, ReadLimits, dropped, read_answer
from clarion.client.endpoints import Endpoints
from clarion.client.errors import (
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestFailed,
    RequestTimeout,
)
from clarion.client.items import History, Published
from clarion.client.refusals import Retry, request_refused
from clarion.client.tokens import Tokens
from clarion.protocol.errors import rule_for

# Seconds an idle connection is used again: under the hub's `limits.keepalive_timeout` (5 s by
# default), so that a request never goes out on a connection the hub is closing for idling,
# which would fail it unanswered.
KEEPALIVE_EXPIRY = 4.0

# Codes for answers that do not carry the hub's error body (e.g. a proxy, or the HTTP server's
# own body-size cap): the same codes the hub would have used. A bare 429 is a proxy's rate limit,
# not one of the hub's (they say which): ``http_429``, retried later (clarion.client.refusals).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
}


def failure(response: httpx.Response) -> RequestFailed:
    """The hub's ``{"error": {"code", "message"}}`` body as an exception (read the body first)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        error = {
            "code": _STATUS_CODES.get(status, f"http_{status}"),
            "message": f"HTTP {status} {response.reason_phrase}".strip(),
        }
    failed = RequestFailed.from_wire(error, status)
    if failed.retry_after is None and status in (429, 503):
        header = response.headers.get("retry-after", "")
        if header.isascii() and header.isdigit() and 0 < len(header) <= 6:
            failed.retry_after = float(header)
    return failed


def nothing_serves(response: httpx.Response) -> bool:
    """Whether ``response`` is a 404 for a path nothing serves (a router's bare "Not Found", or
    another server's page), not the hub's about something it lacks (a webhook): most often the
    hub's URL without the path an application mounted it at (:meth:`Endpoints.doubt`)."""
    if response.status_code != 404:
        return False
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return True
    return not isinstance(message, str) or message == "Not Found"


class HttpApi:
    """One ``httpx.AsyncClient`` for a client's requests (server or client API) and its SSE and
    poll streams."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        api_key: str | None,
        tokens: Tokens,
        timeout: float,
        on_fatal: Callable[[Disconnected], None],
        limits: ReadLimits | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.api_key = api_key
        self.tokens = tokens
        # Told when a request is refused as a connection would be (a fixed token that expired):
        # the client ends, as the hub closing that connection would end it.
        self.on_fatal = on_fatal
        self.timeout = timeout
        self.limits = limits if limits is not None else ReadLimits()
        # Every SSE or poll subscription holds a connection of its own for as long as it lives.
        self.http = httpx.AsyncClient(
            timeout=timeout,
            headers={"Accept": "application/json", **UNCOMPRESSED},
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=20,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def nothing_at(self, path: str) -> bool:
        """Whether ``path`` is answered 404 (nothing is there: the URL is not the hub's, or
        lacks the path it is mounted at); any other answer, or none, says nothing of the URL."""
        try:
            return await self.status("GET", self.endpoints.url(path)) == 404
        except httpx.HTTPError:
            return False

    async def status(self, method: str, url: str, **kwargs: Any) -> int:
        """The status of an answer whose body says nothing the client needs: never read."""
        async with self.http.stream(method, url, **kwargs) as response:
            return response.status_code

    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"apikey {self.api_key}"} if self.api_key else {}

    async def stream_headers(self) -> dict[str, str]:
        return _bearer(await self.tokens.fresh())

    async def _call(self, method: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """The request ``name`` (``publish``, ``history``...) of the server API with the API key,
        else of the client API with the connection token."""
        path = f"/api/{name}" if self.api_key is not None else f"/client/{name}"
        try:
            # One bound for the whole, a retry with a renewed token included.
            async with asyncio.timeout(self.timeout):
                if self.api_key is not None:
                    return await self._send(method, path, self.api_headers(), **kwargs)
                return await self._as_client(method, path, **kwargs)
        except RequestTimeout:
            raise
        except TimeoutError:
            url = self.endpoints.url(path)
            raise RequestTimeout(f"no answer from {url} within {self.timeout} s") from None

    async def _as_client(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        token = await self.tokens.latest()
        try:
            return await self._send(method, path, _bearer(token), **kwargs)
        except RequestFailed as exc:
            decided = self._refusal(exc)
            if not isinstance(decided, Retry):
                raise decided from None
        # Expired, and refused before anything was done: once more with a renewed token.
        token = await self.tokens.renewed(token)
        try:
            return await self._send(method, path, _bearer(token), **kwargs)
        except RequestFailed as exc:
            decided = self._refusal(exc)
            raise (exc if isinstance(decided, Retry) else decided) from None

    def _refusal(self, error: RequestFailed) -> Exception:
        """What a refused client API request raises (a :class:`Retry`: renew the token)."""
        decided = request_refused(error, self.tokens.source)
        if isinstance(decided, Disconnected):
            self.on_fatal(decided)
        return decided

    async def _send(
        self, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> dict[str, Any]:
        url = self.endpoints.url(path)
        try:
            async with self.http.stream(method, url, headers=headers, **kwargs) as streamed:
                response = await read_answer(streamed, self.limits)
        except Dropped as exc:
            raise ConnectionLost(dropped(url, exc)) from None
        except httpx.TimeoutException:
            raise RequestTimeout(f"no answer from {url} within {self.timeout} s") from None
        except httpx.ConnectError as exc:
            raise ConnectFailed(f"cannot connect to {url}: {exc}") from None
        except httpx.RequestError as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionLost(f"the connection to {url} failed: {reason}") from None
        if not response.is_success:
            error = failure(response)
            if nothing_serves(response):
                # The hint a subscription gives at the same URL: a bare "HTTP 404 Not Found"
                # leaves the reader to guess that it is the URL, not the channel.
                raise RequestFailed(
                    f"{error.message}: {self.endpoints.doubt()}", code=error.code, status=404
                )
            raise error
        try:
            body = response.json()
        except ValueError:
            raise ConnectionLost(f"{url} answered with something that is not JSON") from None
        if not isinstance(body, dict):
            raise ConnectionLost(f"{url} answered with something that is not a JSON object")
        return body

    async def publish(
        self,
        channel: str,
        data: Any,
        id: str | None,
        *,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Published:
        body: dict[str, Any] = {"channel": channel, "data": data}
        if id is not None:
            # The client API names it as the ``publish`` op does: a key in the client's space.
            body["id" if self.api_key is not None else "pub_id"] = id
        if ephemeral:
            body["ephemeral"] = True
        if key is not None:
            body["key"] = key
        return Published.from_wire(channel, await self._call("POST", "publish", json=body))

    async def publish_batch(
        self, publications: Sequence[Mapping[str, Any]]
    ) -> list[Published | RequestFailed]:
        # The server API's alone: a batch needs the API key whoever sends it.
        body = await self._send(
            "POST",
            "/api/publish_batch",
            self.api_headers(),
            json={"publications": [dict(p) for p in publications]},
        )
        results = body.get("results")
        if not isinstance(results, list) or len(results) != len(publications):
            raise ConnectionLost("the hub answered a batch with something else than its results")
        return [
            _batch_item(item, result) for item, result in zip(publications, results, strict=True)
        ]

    async def history(
        self, channel: str, since: str | None, limit: int | None, *, reverse: bool = False
    ) -> History:
        params: dict[str, str | int] = {"channel": channel}
        if reverse:
            params["reverse"] = "1"
        if since is not None:
            params["since"] = since
        if limit is not None:
            params["limit"] = limit
        return History.from_wire(channel, await self._call("GET", "history", params=params))

    async def presence_body(self, channel: str) -> dict[str, Any]:
        return await self._call("GET", "presence", params={"channel": channel})

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        return await self._call("GET", "presence_stats", params={"channel": channel})


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _batch_item(item: Mapping[str, Any], result: Any) -> Published | RequestFailed:
    """One answer of a batch: the publication's place, or its refusal with the status it would
    have had as a request of its own."""
    error = result.get("error") if isinstance(result, dict) else None
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        return RequestFailed.from_wire(error, rule_for(code).status if isinstance(code, str) else 0)
    try:
        return Published.from_wire(str(item.get("channel")), result)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConnectionLost("the hub answered a publication of a batch with no place") from None
