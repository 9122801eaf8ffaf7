"""Publications made by STOMP SENDs reach webhooks as they reach every transport: raw bodies as
text or base64 with ``encoding`` and ``content_type``, user headers as ``headers``."""

from __future__ import annotations

import base64

from ..conftest import RunningHub
from ..stomp.client import stomp
from .conftest import register
from .receiver import Receiver


async def test_stomp_bodies_and_headers_reach_webhooks(webhook_hub: RunningHub) -> None:
    binary = b"\x00\x01\xff\xfe\x00"
    async with Receiver() as receiver:
        await register(webhook_hub, receiver, ["files:*"])
        async with stomp(webhook_hub) as client:
            await client.connect()
            frames = [
                (binary, "content-type:application/octet-stream\nx-name:a:b\n"),
                ("ünï text".encode(), "content-type:text/plain\n"),
                (b'{"n":1}', "content-type:application/json\n"),
            ]
            for body, headers in frames:
                head = f"SEND\ndestination:/topic/files\\cin\n{headers}content-length:{len(body)}"
                await client.send_raw(f"{head}\nreceipt:r\n\n".encode() + body + b"\0")
                await client.expect("RECEIPT")
        got = await receiver.wait_acknowledged(3)
    payloads = [r.payload for r in got]
    assert all(r.verified for r in got)
    assert base64.b64decode(payloads[0]["data"]) == binary
    assert payloads[0]["encoding"] == "base64"
    assert payloads[0]["content_type"] == "application/octet-stream"
    assert payloads[0]["headers"] == {"x-name": "a:b"}
    assert (payloads[1]["data"], payloads[1]["encoding"], payloads[1]["content_type"]) == (
        "ünï text",
        "utf-8",
        "text/plain",
    )
    assert payloads[2]["data"] == {"n": 1}
    assert not {"encoding", "content_type", "headers"} & payloads[2].keys()
