"""``POST /api/publish`` as a raw ASGI endpoint: the API's hot path, without framework layers.

Every publication a backend makes comes through here, so the per-request work is kept to
reading a bounded body, one ``orjson`` parse, the hub's publish and one ``orjson`` answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import orjson

from clarion.asgi import access
from clarion.asgi.responses import error_body, send_error, send_json
from clarion.asgitypes import DirectResponse, Receive, Scope, Send
from clarion.core.auth import check_not_reserved
from clarion.core.fanout import publication_cursor
from clarion.core.hub import Hub
from clarion.errors import BadRequest, ClarionError, MethodNotAllowed, TooLarge
from clarion.protocol.channels import validate_channel
from clarion.protocol.errors import ErrorCode
from clarion.protocol.messages import CommandError, signal_fields
from clarion.protocol.numbers import ascii_int
from clarion.protocol.publication import Publication

log = logging.getLogger("clarion.api")

# The body carries the envelope around ``data``: allow some room beyond max_message_bytes.
ENVELOPE_BYTES = 64 * 1024
MAX_BATCH = 1000  # publications per POST /api/publish_batch
YIELD_EVERY = 64  # publications a batch makes before the loop serves the others
NOT_ATTEMPTED = "not attempted: an earlier publication to this channel in the batch failed"


def body_cap(hub: Hub) -> int:
    """The largest request body the API reads: the message cap plus an envelope (clarion's
    server refuses larger ones itself)."""
    return hub.settings.limits.max_message_bytes + ENVELOPE_BYTES


async def read_body(hub: Hub, scope: Scope, receive: Receive) -> bytes:
    """The request body, refused with :class:`TooLarge` past :func:`body_cap`."""
    cap = body_cap(hub)
    # A declared length refused early when it says too much; one that is no number is the
    # server's to refuse, and the read below is bounded whatever the head said.
    declared = access.header(scope, b"content-length")
    size = None if declared is None else ascii_int(declared, max_digits=32)
    if size is not None and size > cap:
        raise TooLarge(f"request body over {cap} bytes")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away")
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > cap:
            raise TooLarge(f"request body over {cap} bytes")
        if not message.get("more_body", False):
            return body


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


class PublishEndpoint:
    """An ASGI application answering ``POST /api/publish``, and the same endpoint as a direct
    route of clarion's server (:class:`~clarion.asgitypes.DirectRoute`): there a request with
    its body in hand is answered by :meth:`respond`, without a scope, a task or ASGI messages,
    and with the memory engine the whole publication completes before it first suspends."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Nothing a publication runs before the engine's first wait needs a task; the memory
        # engine never waits, so the whole publish runs in the server's read callback.
        self.eager = hub.publishes_inline
        # Read from the settings once: each read of a settings field costs more than the check.
        self._api_keys = access.api_keys(hub)
        self._cap = body_cap(hub)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("use POST", allow="POST")
            access.check_api_key(hub, scope)
            raw = await read_body(hub, scope, receive)
        except ClarionError as exc:
            # The client may be gone (it never finished its body): nobody to tell, no error.
            with contextlib.suppress(OSError):
                await send_error(send, exc)
            return
        status, body = await self.publish(raw)
        await send_json(send, status, body)

    def respond(
        self, headers: list[tuple[bytes, bytes]], raw: bytes
    ) -> Coroutine[Any, Any, DirectResponse]:
        """The direct route: a ``POST`` whose body is complete (and small). The checks of the
        request run here; the publication's own coroutine is the answer's (one coroutine less
        to make and to step through per publication)."""
        try:
            self._api_keys.check(headers)
            cap = self._cap
            if len(raw) > cap:
                raise TooLarge(f"request body over {cap} bytes")
        except ClarionError as exc:
            return _answer(exc.status, error_body(exc))
        return self.publish(raw)

    async def publish(self, raw: bytes) -> DirectResponse:
        """Publish what the body ``raw`` asks for; the answer's status and JSON body."""
        try:
            pub = await self.publish_one(parse_object(raw))
        except ClarionError as exc:
            return exc.status, error_body(exc)
        except Exception:
            internal = _internal()
            return internal.status, error_body(internal)
        return 200, orjson.dumps(publish_reply(self.hub, pub))

    async def publish_one(self, body: dict[str, Any]) -> Publication:
        """One publication as a body of ``POST /api/publish`` describes it."""
        channel = validate_channel(body.get("channel"))
        check_not_reserved(channel)
        if "data" not in body:
            raise BadRequest("'data' is required")
        key = body.get("id")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise BadRequest("'id' must be a string of 1 to 128 characters")
        ephemeral, signal_key = False, None
        if "ephemeral" in body or "key" in body:  # a live signal's fields: checked if there
            try:
                ephemeral, signal_key = signal_fields(body)
            except CommandError as exc:
                raise BadRequest(exc.message) from None
        return await self.hub.publish(
            channel, body["data"], idempotency_key=key, ephemeral=ephemeral, key=signal_key
        )


class BatchEndpoint(PublishEndpoint):
    """``POST /api/publish_batch``: several publications in one request, each as the body of
    ``POST /api/publish`` and answered as that would be, in order.

    A backend publishing many small publications a second pays the request once for all of
    them (reading it, the API key, the answer and its write). Each publication succeeds or fails
    on its own, as its own request would: the batch is no transaction.
    """

    async def publish(self, raw: bytes) -> DirectResponse:
        try:
            items = parse_object(raw).get("publications")
            if not isinstance(items, list) or not items:
                raise BadRequest("'publications' must be a non-empty list")
            if len(items) > MAX_BATCH:
                raise BadRequest(f"at most {MAX_BATCH} publications per batch", limit=MAX_BATCH)
        except ClarionError as exc:
            return exc.status, error_body(exc)
        batch = _Batch(self, items)
        if not self.eager:
            await batch.by_channel()
        elif self.hub.publish_listeners:
            await batch.together()
        else:
            await batch.in_turn()
        if batch.unexpected:
            # Once per batch: one fault under a thousand publications is one traceback.
            log.error(
                "%d publications of a batch failed",
                len(batch.unexpected),
                exc_info=batch.unexpected[0],
            )
        return 200, orjson.dumps({"results": batch.results})


class _Batch:
    """One request's publications and their answers, in the request's order."""

    __slots__ = ("endpoint", "items", "results", "unexpected")

    def __init__(self, endpoint: PublishEndpoint, items: list[Any]) -> None:
        self.endpoint = endpoint
        self.items = items
        self.results: list[dict[str, Any]] = [{} for _ in items]
        self.unexpected: list[Exception] = []

    async def in_turn(self) -> None:
        """One after the other, where the engine publishes in the caller's step and nothing
        waits after it: no task, no round trip. The loop serves the others every
        :data:`YIELD_EVERY` publications, so that a large batch to large rooms does not hold it."""
        for i in range(len(self.items)):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)
            await self.attempt(i)

    async def together(self) -> None:
        """All started at once, where the engine publishes in each one's first step (in the
        order they were started) and something waits after it (a webhook outbox's commit,
        shared by those that wait together)."""
        await asyncio.gather(*(self.attempt(i) for i in range(len(self.items))))

    async def by_channel(self) -> None:
        """Each channel's publications one after the other, in the list's order, and the
        channels side by side: what one loop iteration gives the engine shares a round trip,
        and an engine keeps no order between calls under way together. After one the hub fails
        (an engine that does not answer), the rest of its channel's are not attempted: one
        timeout per channel, not per publication, and none overtakes one whose fate is unknown.
        """
        lanes: dict[object, list[int]] = {}
        for i, item in enumerate(self.items):
            channel = item.get("channel") if isinstance(item, dict) else None
            # An item refused before it names a channel goes alone.
            lanes.setdefault(channel if isinstance(channel, str) else i, []).append(i)

        async def lane(indexes: list[int]) -> None:
            for n, i in enumerate(indexes):
                if not await self.attempt(i):
                    code = self.results[i]["error"]["code"]
                    for later in indexes[n + 1 :]:
                        self.results[later] = {"error": {"code": code, "message": NOT_ATTEMPTED}}
                    return

        await asyncio.gather(*(lane(indexes) for indexes in lanes.values()))

    async def attempt(self, i: int) -> bool:
        """Publish item ``i`` and keep its answer; false when the hub failed it (not the item)."""
        item = self.items[i]
        try:
            if not isinstance(item, dict):
                raise BadRequest("each publication must be a JSON object")
            pub = await self.endpoint.publish_one(item)
        except ClarionError as exc:
            self.results[i] = {"error": exc.to_dict()}
            return exc.status < 500
        except Exception as exc:
            self.unexpected.append(exc)
            self.results[i] = {"error": INTERNAL.to_dict()}
            return False
        self.results[i] = publish_reply(self.endpoint.hub, pub)
        return True


INTERNAL = ClarionError("internal error", code=ErrorCode.INTERNAL)


def _internal() -> ClarionError:
    """What an unexpected failure answers; logged here, with its traceback."""
    log.exception("publish failed")
    return INTERNAL


async def _answer(status: int, body: bytes) -> DirectResponse:
    return status, body


def publish_reply(hub: Hub, pub: Publication) -> dict[str, Any]:
    """What a publish answers: the publication's place in the stream, or, for an ephemeral
    one, only that it was (it has no place)."""
    if pub.ephemeral:
        return {"ephemeral": True}
    return {"offset": pub.offset, "epoch": pub.epoch, "cursor": publication_cursor(pub)}
