"""HTTP hooks: the hub asks the application's backend before a session opens (``connect_url``),
before a client reads a channel (``subscribe_url``) and before it publishes (``publish_url``).

Each request is a JSON ``POST`` signed like a webhook (Standard Webhooks headers, keyed with
``hooks.secret``). The answer is ``{"allow": true, ...}``, possibly with amendments (``info``,
``channels``, ``subs`` on connect; ``data`` on publish), or ``{"allow": false, "code"?,
"reason"?}``, which the client gets as its error. Anything else — an error status, a timeout, a
refused connection, a malformed answer — is a failure: refused with ``hook_unavailable`` unless
``on_failure = "allow"``. Connect and subscribe answers are reused for ``cache_ttl`` seconds per
(event, user, channel); publish answers never are: each is about the data it was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from clarion.core.auth import Credentials
from clarion.core.limits import LogLimit
from clarion.errors import BadChannel, Forbidden, HookUnavailable
from clarion.protocol.channels import validate_channel, validate_pattern
from clarion.protocol.errors import ErrorCode, code_of
from clarion.protocol.jsonkeep import writable
from clarion.settings import HooksOptions
from clarion.webhooks import signing

if TYPE_CHECKING:
    from clarion.core.hub import Hub

log = logging.getLogger("clarion.hooks")
# Each connection or subscription may ask a hook that is down: a line per event a minute.
_failures = LogLimit(log)

MAX_ANSWER_BYTES = 65536
MAX_REASON_CHARS = 200
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")

Answer = dict[str, Any]


class HookService:
    """The hub's extension that sets up :class:`HttpHooks` when ``[hooks]`` are configured
    (unless the application gave the hub hooks of its own) and closes the hub's hooks."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def start(self) -> None:
        hub = self.hub
        if hub.settings.hooks.enabled and hub.hooks is None:
            hub.hooks = HttpHooks(hub.settings.hooks)

    async def close(self) -> None:
        hooks, self.hub.hooks = self.hub.hooks, None
        if hooks is not None:
            await hooks.close()


class HttpHooks:
    """The :class:`clarion.core.hooks.Hooks` of ``[hooks]``."""

    def __init__(self, options: HooksOptions) -> None:
        # The settings model checked the secret (present with a URL, and a whsec_ one).
        assert options.secret is not None
        self._key = signing.secret_key(options.secret)
        self.options = options
        import httpx  # here: a hub without [hooks] never loads the HTTP client

        # The backend is the operator's own, named in the configuration: no address filtering.
        # Straight to it (no proxy from the environment), and its answer uncompressed: what is
        # read is what came over the wire, bounded by MAX_ANSWER_BYTES.
        self._http = httpx.AsyncClient(
            timeout=options.timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"accept-encoding": "identity"},
        )
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, Answer]] = OrderedDict()
        self.requests = 0  # sent to the backend (not answered from the cache)

    async def close(self) -> None:
        await self._http.aclose()

    # ---- the three hooks ------------------------------------------------------------------

    async def connect(self, credentials: Credentials, transport: str) -> Credentials:
        url = self.options.connect_url
        if url is None:
            return credentials
        body = {
            "event": "connect",
            "user": credentials.user,
            "transport": transport,
            "channels": list(credentials.channels),
            "subs": list(credentials.subs),
            "info": credentials.info,
        }
        answer = await self._ask("connect", url, credentials.user, "", body, cache=True)
        if answer is None:
            return credentials
        try:
            return _amended(credentials, answer)
        except HookUnavailable as exc:
            if self.options.on_failure == "allow":
                _failures.log(
                    logging.WARNING,
                    "connect answer",
                    "connect hook answer unusable, allowing: %s",
                    exc.message,
                )
                return credentials
            raise

    async def subscribe(
        self, credentials: Credentials, channel: str, client: str | None, transport: str
    ) -> None:
        url = self.options.subscribe_url
        if url is None or credentials.trusted:
            return
        body = {
            "event": "subscribe",
            "user": credentials.user,
            "client": client,
            "transport": transport,
            "channel": channel,
        }
        await self._ask("subscribe", url, credentials.user, channel, body, cache=True)

    async def publish(
        self, credentials: Credentials, channel: str, data: Any, client: str, transport: str
    ) -> Any:
        url = self.options.publish_url
        if url is None or credentials.trusted:
            return data
        body = {
            "event": "publish",
            "user": credentials.user,
            "client": client,
            "transport": transport,
            "channel": channel,
            "data": data,
        }
        # Never from the cache: the backend judges this publication's data (a moderation
        # check), so an answer about one message says nothing of the next.
        answer = await self._ask("publish", url, credentials.user, channel, body, cache=False)
        if answer is None or "data" not in answer:
            return data
        return answer["data"]

    # ---- asking -----------------------------------------------------------------------------

    async def _ask(
        self,
        event: str,
        url: str,
        user: str | None,
        channel: str,
        body: dict[str, Any],
        *,
        cache: bool,
    ) -> Answer | None:
        """The backend's answer (``None``: it failed and ``on_failure`` allows); raises
        :class:`Forbidden` when it denies, :class:`HookUnavailable` when it failed. With
        ``cache``, an answer is reused for the same (event, user, channel)."""
        key = (event, user or "", channel)
        # Only identified users share answers: anonymous sessions are told apart by nothing.
        cacheable = cache and user is not None and self.options.cache_ttl > 0
        cached = self._cache.get(key) if cacheable else None
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(key)
            return _verdict(cached[1])
        try:
            answer = await self._post(url, body)
        except HookUnavailable as exc:
            if self.options.on_failure == "allow":
                _failures.log(
                    logging.WARNING,
                    event,
                    "%s hook failed, allowing (on_failure = allow): %s",
                    event,
                    exc.logged or exc.message,
                )
                return None
            _failures.log(
                logging.WARNING,
                event,
                "%s hook failed, refusing: %s",
                event,
                exc.logged or exc.message,
            )
            raise
        if cacheable and self.options.cache_size > 0:
            self._cache[key] = (time.monotonic() + self.options.cache_ttl, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self.options.cache_size:
                self._cache.popitem(last=False)
        return _verdict(answer)

    async def _post(self, url: str, body: dict[str, Any]) -> Answer:
        import httpx  # loaded by __init__ already: only the name of its error is wanted here

        payload = orjson.dumps(body)
        msg_id = "msg_" + os.urandom(12).hex()
        headers = {
            "content-type": "application/json",
            **signing.headers(self._key, msg_id, int(time.time()), payload),
        }
        self.requests += 1
        try:
            async with asyncio.timeout(self.options.timeout):
                raw = await self._send(url, payload, headers)
        except TimeoutError:
            raise HookUnavailable(
                f"the application's backend did not answer within {self.options.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            # The client is told that much; what the HTTP library said is for the hub's log.
            error = HookUnavailable("the application's backend cannot be reached")
            error.logged = f"{error.message}: {exc!r}"
            raise error from None
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HookUnavailable("the application's backend answered no JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            raise HookUnavailable('the application\'s backend answered without "allow": bool')
        return answer

    async def _send(self, url: str, payload: bytes, headers: dict[str, str]) -> bytes:
        async with self._http.stream("POST", url, content=payload, headers=headers) as response:
            if response.status_code != 200:
                raise HookUnavailable(
                    f"the application's backend answered HTTP {response.status_code}"
                )
            # Compressed, a few hundred kilobytes inflate to gigabytes: refused unread, like
            # any answer the hub did not ask for (it asks for identity).
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise HookUnavailable(
                    f"the application's backend answered with content-encoding {encoding[:40]!r}"
                )
            raw = bytearray()
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    raise HookUnavailable("the application's backend answered too much")
            return bytes(raw)


def _verdict(answer: Answer) -> Answer:
    if answer["allow"]:
        return answer
    code = answer.get("code")
    reason = answer.get("reason")
    raise Forbidden(
        reason[:MAX_REASON_CHARS] if isinstance(reason, str) else "denied by the application",
        code=code_of(code)
        if isinstance(code, str) and _CODE.fullmatch(code)
        else ErrorCode.FORBIDDEN,
    )


def _amended(credentials: Credentials, answer: Answer) -> Credentials:
    """``credentials`` with what the connect answer replaces: ``info``, ``channels``, ``subs``."""
    changes: dict[str, Any] = {}
    try:
        if "info" in answer:
            if answer["info"] is not None and not isinstance(answer["info"], dict):
                raise HookUnavailable('the connect hook\'s "info" must be an object')
            if not writable(answer["info"]):
                raise HookUnavailable('the connect hook\'s "info" is nested too deep')
            changes["info"] = answer["info"]
        for name, check in (("channels", validate_pattern), ("subs", validate_channel)):
            if name in answer:
                value = answer[name]
                if not isinstance(value, list):
                    raise HookUnavailable(f'the connect hook\'s "{name}" must be a list')
                changes[name] = tuple(dict.fromkeys(check(item) for item in value))
    except BadChannel as exc:
        raise HookUnavailable(f"the connect hook answered a bad channel: {exc.message}") from None
    return dataclasses.replace(credentials, **changes) if changes else credentials
