"""Load generator for clarion's benchmarks (a test tool, not part of clarion).

It opens many subscriber connections (WebSocket or Server-Sent Events) to one server on
loopback, publishes ~100-byte JSON messages to one channel over keep-alive HTTP, and counts
what arrives. It is built to stay cheaper than the servers it measures:

* raw ``asyncio.BufferedProtocol``s on uvloop; all connections read into one shared buffer;
* the WebSocket client handshake is written by hand as raw bytes;
* most subscribers only walk WebSocket frame headers (or count ``\\ndata:`` in an SSE stream)
  to count deliveries; a sampled subset parses every message, for latency;
* it reports its own CPU use (and each core's), so a run in which the generator, not the
  server, was the limit is visible.

Run one measurement and print its result as one JSON line::

    python -m benchmarks.loadgen --server nchan --transport ws --port 8080 \\
        --mode saturate --subscribers 1000 --duration 10

Modes: ``saturate`` (closed-loop publishing: at most ``--window`` publications not yet
delivered to every subscriber), ``rate`` (open loop, ``--rate`` publications/s), ``idle``
(connect, subscribe, measure the server's RSS, check one delivery), ``storm`` (drop every
connection at once, reconnect with the last cursor, check nothing was lost; clarion only).

Several nodes of one hub (the Redis engine): ``--also-port`` names the others. Subscribers
and publishers are spread over all nodes, and in storm mode each client reconnects to the
*next* node, so that every resume crosses nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import resource
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson

CHANNEL = "bench"
SERVERS = ("clarion", "nchan", "node")
TRANSPORTS = ("ws", "sse")
MODES = ("saturate", "rate", "idle", "storm")

# One receive buffer shared by every subscriber connection: each read is fully processed in
# buffer_updated() before the event loop reads the next socket.
_BUF = bytearray(256 * 1024)
_VIEW = memoryview(_BUF)

_T_RE = re.compile(rb'"t":(\d+)')
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {l_onoff=1, l_linger=0}
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class LoadConfig:
    server: str = "clarion"  # clarion | nchan | node
    transport: str = "ws"  # ws | sse
    host: str = "127.0.0.1"
    port: int = 8000
    also_ports: list[int] = dataclasses.field(default_factory=list)  # more nodes, same hub
    mode: str = "saturate"
    subscribers: int = 1000
    channels: int = 1  # subscriber i listens on channel i % channels; publications go round
    publishers: int = 0  # publisher connections (0: --window at saturation, else 4)
    duration: float = 10.0  # measured seconds (saturate/rate) or publishing seconds (storm)
    warmup: float = 2.0  # seconds of publishing before measuring
    window: int = 8  # saturate: publications in flight (not yet delivered to all)
    rate: float = 100.0  # rate/storm: publications per second
    sample: float = 0.01  # fraction of subscribers that parse every message
    payload_size: int = 100  # bytes of the published JSON document
    per_address: int = 500  # subscriber connections per loopback source address
    connect_concurrency: int = 256
    settle: float = 0.5  # seconds between "all subscribed" and the first publication
    drain: float = 5.0  # seconds to wait for in-flight deliveries after publishing stops
    server_pids: list[int] = dataclasses.field(default_factory=list)
    timeout: float = 180.0  # hard bound on the whole run
    reconnect_deadline: float = 10.0  # storm: reconnect+resume must finish within this
    storm_before: float = 3.0  # storm: publishing seconds before the drop
    storm_away: float = 1.0  # storm: seconds between the drop and the reconnect
    redis_port: int = 0  # storm: the nodes' Redis, whose work per resumed session is counted
    storm_mark: str = ""  # storm: a file told "drop <pids>" at the drop, "caught" at the end
    # rate mode: subscribers that do not sample latency read their sockets every this many
    # seconds instead of on each arrival (0: on arrival). See LazyReader.
    read_every: float = 0.0
    # clarion: publications per request, through POST /api/publish_batch (1: POST /api/publish)
    batch: int = 1

    def validate(self) -> None:
        if self.server not in SERVERS:
            raise ValueError(f"unknown server {self.server!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.mode == "storm" and (self.server, self.transport) != ("clarion", "ws"):
            raise ValueError("storm mode needs clarion over WebSocket (cursor resume)")
        if self.also_ports and self.server != "clarion":
            raise ValueError("several nodes of one hub: clarion only")
        if self.subscribers < 1 or self.window < 1 or self.payload_size < 48:
            raise ValueError("subscribers>=1, window>=1, payload_size>=48 required")
        if self.channels < 1 or self.subscribers % self.channels:
            raise ValueError("subscribers must be a multiple of channels")
        if self.channels > 1 and self.mode == "storm":
            raise ValueError("storm mode uses one channel")
        if self.read_every < 0 or (self.read_every and self.mode != "rate"):
            raise ValueError("read_every: rate mode only (saturation counts every delivery)")
        if self.batch < 1 or (
            self.batch > 1 and (self.server, self.mode) != ("clarion", "saturate")
        ):
            raise ValueError("batch: clarion at saturation only")


@dataclasses.dataclass(frozen=True)
class Endpoints:
    sub_template: str  # "{ch}" stands for the channel
    pub_template: str
    subprotocol: str | None
    expect_reply: bool  # the server answers the subscribe op before deliveries
    wrap_publish: bool  # clarion: body is {"channel":..., "data":...}

    def sub_path(self, channel: str = CHANNEL) -> str:
        return self.sub_template.replace("{ch}", channel)

    def pub_path(self, channel: str = CHANNEL) -> str:
        return self.pub_template.replace("{ch}", channel)


def endpoints(server: str, transport: str) -> Endpoints:
    if server == "clarion":
        sub = "/ws" if transport == "ws" else "/sse?channel={ch}"
        return Endpoints(sub, "/api/publish", "clarion.v1", transport == "ws", True)
    if server == "nchan":
        sub = "/ws?id={ch}" if transport == "ws" else "/sse?id={ch}"
        return Endpoints(sub, "/pub?id={ch}", None, False, False)
    sub = "/ws" if transport == "ws" else "/sse"
    return Endpoints(sub, "/pub", None, False, False)


def channel_name(k: int, channels: int) -> str:
    """Channel ``k`` of ``channels``: one channel is ``bench``, several ``bench0``, ``bench1``..."""
    return CHANNEL if channels == 1 else f"{CHANNEL}{k % channels}"


# --------------------------------------------------------------------------------------------
# Byte helpers (pure; unit-tested in tests/benchmarks)


def mask_frame(payload: bytes, opcode: int = 1, key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client-to-server WebSocket frame (FIN set, masked with ``key``)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if any(key):
        k = (key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")
    else:
        masked = payload
    return head + key + masked


def server_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A server-to-client (unmasked) frame; used by tests."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


def source_address(i: int, per_address: int) -> str:
    """Loopback source address of subscriber ``i``: 127.0.0.2, 127.0.0.3, ... so that each
    address carries at most ``per_address`` connections (ephemeral ports, per-IP limits)."""
    return str(ipaddress.IPv4Address((127 << 24) + 2 + i // per_address))


# Every published document starts with it, exactly once: a delivered message is one MARKER.
MARKER = b'{"t":'


def make_payload(seq: int, size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes carrying a send timestamp (monotonic ns)."""
    head = b'{"t":%d,"s":%d,"p":"' % (time.monotonic_ns(), seq)
    pad = size - len(head) - 2
    return head + b"x" * max(pad, 0) + b'"}'


def ws_upgrade_request(host: str, port: int, path: str, subprotocol: str | None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sse_request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()


def subscribe_op(since: str | None = None, channel: str = CHANNEL) -> bytes:
    op: dict[str, Any] = {"id": 1, "op": "subscribe", "channel": channel}
    if since is not None:
        op["since"] = since
    return orjson.dumps(op)


# --------------------------------------------------------------------------------------------
# Shared counters


class Stats:
    """Counters shared by all connections of one run (updated on the hot path)."""

    def __init__(self) -> None:
        self.delivered = 0  # data messages received by all subscribers
        self.gate = 1 << 62  # when delivered reaches this, call on_gate()
        self.on_gate: Callable[[], None] = _noop
        self.measuring = False
        self.latencies_ns: list[int] = []
        self.subscribed = 0
        self.closed = 0
        self.errors: dict[str, int] = {}
        self.control_frames = 0
        # storm mode
        self.pub_last_offset = 0
        self.caught_up = 0
        self.all_caught_at = 0.0
        self.stages: list[tuple[float, float]] = []  # per opened connection: (TCP, to reply) s
        self.gaps = 0
        self.dups = 0
        self.resets = 0
        self.epoch_changes = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _noop() -> None:
    return None


class Client:
    """Storm mode: what one subscriber remembers across reconnects."""

    __slots__ = ("caught", "cursor", "epoch", "last", "received", "target")

    def __init__(self) -> None:
        self.last = 0  # last offset received (0 = none)
        self.cursor: str | None = None
        self.epoch: str | None = None
        self.received = 0
        self.target = 0  # offset to reach to count as caught up
        self.caught = False


# --------------------------------------------------------------------------------------------
# Subscriber protocols

HANDSHAKE, OPEN, CLOSED = 0, 1, 2


class WsSubscriber(asyncio.BufferedProtocol):
    """A WebSocket subscriber. Fast mode walks frame headers only; full mode parses frames."""

    def __init__(
        self,
        st: Stats,
        request: bytes,
        subscribe: bytes | None,
        sampled: bool,
        client: Client | None = None,
    ) -> None:
        self.st = st
        self.request = request
        self.subscribe = subscribe  # masked subscribe frame to send after the handshake
        self.sampled = sampled
        self.client = client
        self.state = HANDSHAKE
        self.awaiting_reply = subscribe is not None
        self.full = sampled or self.awaiting_reply or client is not None
        self.transport: asyncio.Transport | None = None
        self.hbuf = bytearray()
        self.acc = bytearray()  # full mode: unparsed bytes
        self.frag = bytearray()
        self.carry = b""  # fast mode: a partial frame header
        self.skip = 0  # fast mode: payload bytes of the current frame still to come
        self.n = 0  # messages delivered to this subscriber
        self.by_marker = False  # fast mode counts MARKER occurrences instead of frames
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.st.closed += 1
        if not self.ready.done():
            self.ready.set_result(False)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == OPEN and not self.full and self.by_marker:
            k = _BUF.count(MARKER, 0, nbytes)
            if self.carry:  # a marker cut by the previous read
                k += (self.carry + _BUF[: len(MARKER) - 1]).count(MARKER)
            self.carry = bytes(_BUF[nbytes - len(MARKER) + 1 : nbytes])
            if k:
                self._count(k)
        elif self.state == OPEN and not self.full:
            if self.carry:
                data = self.carry + _BUF[:nbytes]
                self.carry = b""
                self._walk(data, 0, len(data))
            else:
                self._walk(_BUF, 0, nbytes)
        elif self.state == OPEN:
            self._feed_full(bytes(_BUF[:nbytes]))
        elif self.state == HANDSHAKE:
            self._handshake(bytes(_BUF[:nbytes]))

    def eof_received(self) -> bool | None:
        return None

    # handshake --------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        self.hbuf += data
        end = self.hbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.hbuf) > 16384:
                self._fail("handshake_too_long")
            return
        head = bytes(self.hbuf[:end])
        rest = bytes(self.hbuf[end + 4 :])
        self.hbuf = bytearray()
        if not head.startswith(b"HTTP/1.1 101"):
            self._fail("handshake_status_" + head[9:12].decode("latin-1", "replace"))
            return
        self.state = OPEN
        assert self.transport is not None
        if self.subscribe is not None:
            self.transport.write(self.subscribe)
        else:
            self._subscribed()
        if rest:
            if self.full:
                self._feed_full(rest)
            elif self.by_marker:
                self.carry = rest[-(len(MARKER) - 1) :]
                if rest.count(MARKER):
                    self._count(rest.count(MARKER))
            else:
                self._walk(rest, 0, len(rest))

    def _subscribed(self) -> None:
        self.st.subscribed += 1
        if not self.ready.done():
            self.ready.set_result(True)

    def _fail(self, kind: str) -> None:
        self.st.error(kind)
        if not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    # fast path: count frames by walking headers -----------------------------------------

    def _walk(self, data: bytes | bytearray, pos: int, end: int) -> None:
        skip = self.skip
        if skip:
            if skip >= end - pos:
                self.skip = skip - (end - pos)
                return
            pos += skip
        frames = 0
        while pos < end:
            if end - pos < 2:
                break
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F
            if ln < 126:
                h = pos + 2
            elif ln == 126:
                if end - pos < 4:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                h = pos + 4
            else:
                if end - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                h = pos + 10
            if b0 & 0x08:  # control frame: needs its whole payload
                if end - h < ln:
                    break
                self._control(b0 & 0x0F, bytes(data[h : h + ln]))
            elif b0 & 0x80:
                frames += 1
            pos = h + ln
        else:
            self.skip = pos - end
            if frames:
                self._count(frames)
            return
        self.skip = 0
        self.carry = bytes(data[pos:end])
        if frames:
            self._count(frames)

    def _count(self, frames: int) -> None:
        self.n += frames
        st = self.st
        st.delivered += frames
        if st.delivered >= st.gate:
            st.on_gate()

    # full path: parse every frame -------------------------------------------------------

    def _feed_full(self, data: bytes) -> None:
        acc = self.acc
        acc += data
        pos = 0
        end = len(acc)
        while end - pos >= 2:
            b0 = acc[pos]
            ln = acc[pos + 1] & 0x7F
            if ln < 126:
                h = pos + 2
            elif ln == 126:
                if end - pos < 4:
                    break
                ln = (acc[pos + 2] << 8) | acc[pos + 3]
                h = pos + 4
            else:
                if end - pos < 10:
                    break
                ln = int.from_bytes(acc[pos + 2 : pos + 10], "big")
                h = pos + 10
            if end - h < ln:
                break
            payload = bytes(acc[h : h + ln])
            pos = h + ln
            op = b0 & 0x0F
            if op >= 8:
                self._control(op, payload)
                continue
            if op != 0:
                self.frag = bytearray(payload)
            else:
                self.frag += payload
            if b0 & 0x80:
                message = bytes(self.frag)
                self.frag = bytearray()
                self._message(message)
                if self.state != OPEN:
                    return
        del acc[:pos]
        if (
            not acc
            and not self.sampled
            and not self.awaiting_reply
            and self.client is None
            and not self.frag
        ):
            self.full = False  # switch to the fast path

    def _message(self, payload: bytes) -> None:
        if self.client is not None:
            self._tracked(payload)
            return
        if self.awaiting_reply:
            msg = orjson.loads(payload)
            if isinstance(msg, dict) and "id" in msg:
                self._reply(msg)
                return
        self._count(1)
        if self.sampled and self.st.measuring:
            m = _T_RE.search(payload)
            if m is not None:
                self.st.latencies_ns.append(time.monotonic_ns() - int(m.group(1)))

    def _reply(self, msg: dict[str, Any]) -> bool:
        self.awaiting_reply = False
        if "ok" not in msg:
            code = str((msg.get("error") or {}).get("code", "unknown"))
            self._fail("subscribe_error_" + code)
            return False
        self._subscribed()
        return True

    def _tracked(self, payload: bytes) -> None:
        """Storm mode: check every publication's offset; remember the cursor."""
        msg = orjson.loads(payload)
        if not isinstance(msg, dict):
            return
        client = self.client
        assert client is not None
        st = self.st
        if "id" in msg:
            if not self._reply(msg):
                return
            ok = msg.get("ok")
            client.target = st.pub_last_offset
            if isinstance(ok, dict):
                for pub in ok.get("publications") or ():
                    self._publication(client, pub)
                if isinstance(ok.get("epoch"), str) and client.epoch is None:
                    client.epoch = ok["epoch"]
            self._check_caught(client)
            return
        if "reset" in msg:
            # Counted (a reset fails the run); the stream restarts, so what follows is not
            # also counted as a gap.
            st.resets += 1
            client.last = 0
            client.epoch = None
            return
        if "offset" in msg:
            self._publication(client, msg)
            self._check_caught(client)

    def _publication(self, client: Client, pub: dict[str, Any]) -> None:
        st = self.st
        offset = int(pub["offset"])
        epoch = pub.get("epoch")
        if client.epoch is not None and epoch != client.epoch:
            st.epoch_changes += 1
        client.epoch = epoch
        if client.last and offset != client.last + 1:
            if offset <= client.last:
                st.dups += 1
                return
            st.gaps += offset - client.last - 1
        client.last = offset
        cursor = pub.get("cursor")
        if isinstance(cursor, str):
            client.cursor = cursor
        client.received += 1
        self._count(1)

    def _check_caught(self, client: Client) -> None:
        if not client.caught and not self.awaiting_reply and client.last >= client.target:
            client.caught = True
            st = self.st
            st.caught_up += 1
            st.all_caught_at = time.monotonic()

    # control frames ---------------------------------------------------------------------

    def _control(self, op: int, payload: bytes) -> None:
        self.st.control_frames += 1
        transport = self.transport
        if transport is None:
            return
        if op == 9:  # ping -> pong with the same payload (zero mask key)
            transport.write(mask_frame(payload, 10, b"\x00\x00\x00\x00"))
        elif op == 8:  # close -> echo the code, then drop
            self.st.error("server_close")
            transport.write(mask_frame(payload[:2], 8, b"\x00\x00\x00\x00"))
            self.state = CLOSED
            self.st.closed += 1
            transport.close()


class SseSubscriber(asyncio.BufferedProtocol):
    """An SSE subscriber. Fast mode counts ``\\ndata:``; sampled ones parse data lines."""

    def __init__(self, st: Stats, request: bytes, sampled: bool) -> None:
        self.st = st
        self.request = request
        self.sampled = sampled
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.hbuf = bytearray()
        self.tail = b""
        self.lines = bytearray()
        self.n = 0
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.st.closed += 1
        if not self.ready.done():
            self.ready.set_result(False)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == OPEN and not self.sampled:
            buf = _BUF
            k = buf.count(b"\ndata:", 0, nbytes)
            if self.tail:
                k += (self.tail + buf[:5]).count(b"\ndata:")
            self.tail = bytes(buf[nbytes - 5 : nbytes]) if nbytes >= 5 else b""
            if k:
                self._count(k)
        elif self.state == OPEN:
            self._feed_sampled(bytes(_BUF[:nbytes]))
        elif self.state == HANDSHAKE:
            self._handshake(bytes(_BUF[:nbytes]))

    def eof_received(self) -> bool | None:
        return None

    def _handshake(self, data: bytes) -> None:
        self.hbuf += data
        end = self.hbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.hbuf) > 16384:
                self._fail("handshake_too_long")
            return
        head = bytes(self.hbuf[:end])
        rest = bytes(self.hbuf[end + 4 :])
        self.hbuf = bytearray()
        if not head.startswith(b"HTTP/1.1 200"):
            self._fail("sse_status_" + head[9:12].decode("latin-1", "replace"))
            return
        self.state = OPEN
        self.st.subscribed += 1
        if not self.ready.done():
            self.ready.set_result(True)
        # the body starts here: a leading "data:" counts as if preceded by a newline
        rest = b"\n" + rest
        if self.sampled:
            self._feed_sampled(rest)
        else:
            k = rest.count(b"\ndata:")
            self.tail = rest[-5:]
            if k:
                self._count(k)

    def _fail(self, kind: str) -> None:
        self.st.error(kind)
        if not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    def _count(self, k: int) -> None:
        self.n += k
        st = self.st
        st.delivered += k
        if st.delivered >= st.gate:
            st.on_gate()

    def _feed_sampled(self, data: bytes) -> None:
        self.lines += data
        end = self.lines.rfind(b"\n")
        if end < 0:
            return
        complete = bytes(self.lines[: end + 1])
        del self.lines[: end + 1]
        now = time.monotonic_ns()
        for line in complete.split(b"\n"):
            if line.startswith(b"data:"):
                self._count(1)
                if self.st.measuring:
                    m = _T_RE.search(line)
                    if m is not None:
                        self.st.latencies_ns.append(now - int(m.group(1)))


# --------------------------------------------------------------------------------------------
# Publisher: keep-alive HTTP/1.1, one request in flight per connection


class Publisher(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        port: int,
        on_done: Callable[[Publisher, int, bytes], None],
        on_lost: Callable[[Publisher], None],
    ):
        self.host = host
        self.port = port
        self.on_done = on_done
        self.on_lost = on_lost
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.busy = False
        self.carries = 0  # publications in the request under way
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.busy = False
            self.on_done(self, 0, b"")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        body = bytes(self.body)
        self.body.clear()
        self.busy = False
        self.on_done(self, status, body)

    def post(self, path: str, body: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), self.port, len(body), body)
        )


# --------------------------------------------------------------------------------------------
# /proc readings


def descendants(pids: list[int]) -> list[int]:
    """``pids`` plus all their descendant processes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(rest[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def proc_cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and kernel CPU seconds of ``pids`` together (a process gone counts nothing)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user += int(rest[11])
        system += int(rest[12])
    return user / _CLK_TCK, system / _CLK_TCK


def proc_cpu_seconds(pids: list[int]) -> float:
    return sum(proc_cpu_split(pids))


def redis_info(port: int) -> dict[str, str]:
    """``INFO all`` of the Redis on ``port`` as a flat dict (blocking; a few ms)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n")
        size = int(head[1:])
        while len(body) < size:
            body += s.recv(65536)
    info = {}
    for line in body[:size].decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key] = value
    return info


def mark(path: str, line: str) -> None:
    """Append ``line`` to ``path`` (none: do nothing): tells a watcher where a run stands."""
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class RedisWork:
    """What Redis did between two INFO snapshots: CPU, read events (one per request burst a
    client sends, so about one per round trip) and commands, scripts' inner ones included."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.before = redis_info(port)
        self.pid = int(self.before["process_id"])

    def since(self) -> dict[str, Any]:
        after = redis_info(self.port)

        def delta(key: str) -> float:
            return float(after.get(key, 0)) - float(self.before.get(key, 0))

        commands: dict[str, int] = {}
        for key, value in after.items():
            if key.startswith("cmdstat_"):
                calls = int(value.split(",")[0].split("=")[1])
                old = self.before.get(key)
                calls -= int(old.split(",")[0].split("=")[1]) if old else 0
                if calls:
                    commands[key[8:]] = calls
        return {
            "cpu_seconds": delta("used_cpu_user") + delta("used_cpu_sys"),
            "reads": int(delta("total_reads_processed")),
            "commands": int(delta("total_commands_processed")),
            "by_command": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
        }


def proc_rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def cpu_times() -> dict[str, tuple[int, int, int]]:
    """Per-core (busy, total, softirq) jiffies from /proc/stat."""
    out: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            parts = line.split()
            values = [int(x) for x in parts[1:]] + [0] * 8
            idle = values[3] + values[4]
            total = sum(values[:8])
            out[parts[0].decode()] = (total - idle, total, values[6])
    return out


def server_core(pids: list[int]) -> str | None:
    """The one core the server is pinned to (``cpuN``), if it is pinned to exactly one."""
    if not pids:
        return None
    try:
        cores = os.sched_getaffinity(pids[0])
    except OSError:
        return None
    return f"cpu{next(iter(cores))}" if len(cores) == 1 else None


def ksoftirqd_pids(core: str | None) -> list[int]:
    """The pid of ``ksoftirqd/N`` for core ``cpuN``."""
    if core is None:
        return []
    name = f"ksoftirqd/{core[3:]}"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        return [int(entry)]
            except OSError:
                continue
    return []


class Snapshot:
    def __init__(self, st: Stats, server_pids: list[int], ksoftirqd: list[int]) -> None:
        self.wall = time.monotonic()
        self.delivered = st.delivered
        self.gen_cpu = time.process_time()
        self.server_cpu = proc_cpu_seconds(server_pids)
        self.ksoftirqd_cpu = proc_cpu_seconds(list(ksoftirqd))
        self.cores = cpu_times()


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[i])


# --------------------------------------------------------------------------------------------
# The run


class LazyReader:
    """Reads the sockets of subscribers that do not sample latency on a timer, not on arrival.

    A subscriber on another machine costs its server nothing after the server's ``send``. On
    loopback, a subscriber waiting in ``epoll`` makes each of the server's sends also wake it
    (the wake-up runs in the sender's system call), and reading each frame as it arrives
    makes the generator do one ``epoll`` wake-up and one ``recv`` per delivery — at one frame
    per write, more work than the server's. Here those subscribers' sockets leave the event
    loop (``pause_reading``) and are drained together every ``interval`` seconds: the
    server's sends wake no one, and one ``recv`` takes every frame that arrived meanwhile.
    Deliveries are still counted exactly (later, by at most ``interval``); sampled
    subscribers keep reading on arrival, so latency is measured as before. Both servers of a
    comparison are measured the same way.
    """

    def __init__(self, subs: list[WsSubscriber | SseSubscriber], interval: float) -> None:
        self.interval = interval
        self.socks: list[tuple[WsSubscriber | SseSubscriber, socket.socket]] = []
        for sub in subs:
            if sub.state != OPEN or sub.sampled or sub.transport is None:
                continue
            if isinstance(sub, WsSubscriber) and sub.full:
                continue
            raw = sub.transport.get_extra_info("socket")
            if raw is None:
                continue
            sub.transport.pause_reading()
            # A socket object of our own on a duplicate descriptor: the transport's stays its.
            sock = socket.socket(fileno=os.dup(raw.fileno()))
            sock.setblocking(False)
            self.socks.append((sub, sock))
        self.running = True

    def drain(self) -> None:
        size = len(_BUF)
        for sub, sock in self.socks:
            if sub.state != OPEN:
                continue
            while True:
                try:
                    n = sock.recv_into(_BUF, size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    n = 0
                if n == 0:  # closed by the server: the transport, paused, cannot tell
                    sub.connection_lost(None)
                    break
                sub.buffer_updated(n)
                if n < size:
                    break

    async def run(self) -> None:
        while self.running:
            await asyncio.sleep(self.interval)
            self.drain()

    def close(self) -> None:
        self.running = False
        for _, sock in self.socks:
            sock.close()
        self.socks.clear()


class LoadGen:
    def __init__(self, cfg: LoadConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.ep = endpoints(cfg.server, cfg.transport)
        self.st = Stats()
        self.loop = asyncio.get_running_loop()
        self.subs: list[WsSubscriber | SseSubscriber] = []
        self.clients: list[Client] = []
        self.server_pids = descendants(cfg.server_pids) if cfg.server_pids else []
        self.ksoftirqd = ksoftirqd_pids(server_core(self.server_pids))
        # publishing
        self.pubs: list[Publisher] = []
        # round robin, so that no keep-alive connection idles into the server's idle timeout
        self.idle_pubs: collections.deque[Publisher] = collections.deque()
        self.publishing = False
        self.seq = 0
        self.sent = 0
        self.acked = 0  # 2xx answers
        self.pub_errors = 0
        self.late = 0  # rate mode: ticks with no idle publisher connection
        self.pub_reopens = 0
        self.ports = [cfg.port, *cfg.also_ports]
        self.fanout = cfg.subscribers // cfg.channels  # deliveries per publication
        self.shift = 0  # storm: client i connects to ports[(i + shift) % len(ports)]
        self._tasks: set[asyncio.Future[None]] = set()
        self.lazy: LazyReader | None = None
        self.result: dict[str, Any] = {"config": dataclasses.asdict(cfg)}

    # connections --------------------------------------------------------------------------

    def _source(self, i: int) -> str:
        return source_address(i, self.cfg.per_address)

    def _port(self, i: int) -> int:
        return self.ports[(i + self.shift) % len(self.ports)]

    async def _open(
        self, factory: Callable[[], asyncio.BaseProtocol], source: str, port: int
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            await self.loop.sock_connect(sock, (self.cfg.host, port))
            await self.loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise

    def _make_sub(self, i: int, client: Client | None) -> WsSubscriber | SseSubscriber:
        cfg = self.cfg
        every = max(1, round(1 / cfg.sample)) if cfg.sample > 0 else 0
        sampled = bool(every) and i % every == every // 2
        channel = channel_name(i, cfg.channels)
        path = self.ep.sub_path(channel)
        if cfg.transport == "sse":
            return SseSubscriber(self.st, sse_request(cfg.host, self._port(i), path), sampled)
        request = ws_upgrade_request(cfg.host, self._port(i), path, self.ep.subprotocol)
        subscribe = None
        if self.ep.expect_reply:
            since = client.cursor if client is not None else None
            subscribe = mask_frame(subscribe_op(since, channel))
        sub = WsSubscriber(self.st, request, subscribe, sampled, client)
        # At saturation the counting itself must stay cheap: count the payload's marker in C
        # (bytes.count) instead of walking frame headers in Python. Nothing pings a busy
        # connection during a run, and sampled subscribers still parse every frame.
        sub.by_marker = self.cfg.mode == "saturate"
        return sub

    async def _connect_one(self, i: int, sem: asyncio.Semaphore, deadline: float) -> None:
        client = self.clients[i] if self.clients else None
        delay = 0.05
        async with sem:
            while time.monotonic() < deadline:
                sub = self._make_sub(i, client)
                try:
                    t0 = time.monotonic()
                    await self._open(lambda sub=sub: sub, self._source(i), self._port(i))
                    t1 = time.monotonic()
                    ok = await asyncio.wait_for(sub.ready, max(0.1, deadline - time.monotonic()))
                    self.st.stages.append((t1 - t0, time.monotonic() - t1))
                except (OSError, TimeoutError, RuntimeError) as exc:
                    self.st.error(f"connect_{type(exc).__name__}")
                    ok = False
                if ok:
                    self.subs[i] = sub
                    return
                if sub.transport is not None:
                    sub.transport.abort()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def connect_all(self, timeout: float) -> float:
        cfg = self.cfg
        t0 = time.monotonic()
        sem = asyncio.Semaphore(cfg.connect_concurrency)
        self.subs = [None] * cfg.subscribers  # type: ignore[list-item]
        deadline = t0 + timeout
        await asyncio.gather(*(self._connect_one(i, sem, deadline) for i in range(cfg.subscribers)))
        missing = sum(1 for s in self.subs if s is None)
        if missing:
            raise RuntimeError(
                f"{missing} of {cfg.subscribers} subscribers failed to subscribe "
                f"(errors: {self.st.errors})"
            )
        return time.monotonic() - t0

    def close_all(self) -> None:
        for sub in self.subs:
            if sub is not None and sub.transport is not None:
                sub.transport.abort()

    async def open_publishers(self, n: int) -> None:
        for _ in range(n):
            port = self.ports[(len(self.pubs) + self.pub_reopens) % len(self.ports)]
            publisher = Publisher(self.cfg.host, port, self._pub_done, self._pub_lost)
            _, proto = await self.loop.create_connection(
                lambda publisher=publisher: publisher,  # type: ignore[misc]
                self.cfg.host,
                port,
            )
            self.pubs.append(cast(Publisher, proto))
            self.idle_pubs.append(cast(Publisher, proto))

    def close_publishers(self) -> None:
        self.publishing = False
        for p in list(self.pubs):
            if p.transport is not None:
                p.transport.close()

    # publishing ---------------------------------------------------------------------------

    def _body(self, channel: str) -> bytes:
        data = make_payload(self.seq, self.cfg.payload_size)
        if self.ep.wrap_publish:
            return b'{"channel":"%s","data":%s}' % (channel.encode(), data)
        return data

    def _publish(self) -> bool:
        if not self.idle_pubs:
            return False
        pub = self.idle_pubs.popleft()
        batch = self.cfg.batch
        if batch > 1:
            items = []
            for _ in range(batch):
                self.seq += 1
                items.append(self._body(channel_name(self.seq, self.cfg.channels)))
            pub.post("/api/publish_batch", b'{"publications":[%s]}' % b",".join(items))
        else:
            self.seq += 1
            channel = channel_name(self.seq, self.cfg.channels)
            pub.post(self.ep.pub_path(channel), self._body(channel))
        pub.carries = batch
        self.sent += batch
        return True

    def _pub_done(self, pub: Publisher, status: int, body: bytes) -> None:
        if 200 <= status < 300 and pub.carries > 1:
            # A batch: each publication answered on its own.
            refused = body.count(b'{"error":')
            self.acked += pub.carries - refused
            self.pub_errors += refused
            if refused:
                self.st.error("publish_refused_in_batch")
        elif 200 <= status < 300:
            self.acked += 1
            if self.cfg.mode == "storm" and body:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    off = int(orjson.loads(body)["offset"])
                    self.st.pub_last_offset = max(self.st.pub_last_offset, off)
        else:
            self.pub_errors += max(1, pub.carries)
            self.st.error(f"publish_status_{status}")
        if pub.transport is not None and not pub.transport.is_closing():
            self.idle_pubs.append(pub)
        if self.cfg.mode == "saturate":
            self._pump()

    def _pub_lost(self, pub: Publisher) -> None:
        """A publisher connection closed (e.g. the server's keep-alive limit): replace it."""
        if pub in self.idle_pubs:
            self.idle_pubs.remove(pub)
        if pub not in self.pubs:
            return
        self.pubs.remove(pub)
        if pub.busy:  # its request got no answer
            self.pub_errors += max(1, pub.carries)
            self.st.error("publish_connection_lost")
        if self.publishing and self.pub_reopens < 100:
            self.pub_reopens += 1
            task = asyncio.ensure_future(self._reopen_publisher())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reopen_publisher(self) -> None:
        try:
            await self.open_publishers(1)
        except OSError:
            self.st.error("publisher_reconnect_failed")
            return
        if self.cfg.mode == "saturate":
            self._pump()

    def _pump(self) -> None:
        """Closed loop: keep at most ``window`` publications not yet delivered to all."""
        st = self.st
        n = self.fanout
        window = self.cfg.window
        while self.publishing and self.sent - st.delivered // n < window:
            if not self._publish():
                break
        # wake up once the oldest outstanding publication has been delivered everywhere
        st.gate = (self.sent - window + 1) * n if self.publishing else 1 << 62

    async def _publish_at_rate(self, rate: float, until: float) -> None:
        interval = 1.0 / rate
        nxt = time.monotonic()
        while self.publishing and nxt < until:
            if not self._publish():
                self.late += 1
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # fell far behind: do not burst to catch up
                nxt = time.monotonic()

    async def _wait_drained(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        n = self.fanout
        while time.monotonic() < end:
            if len(self.idle_pubs) == len(self.pubs) and self.st.delivered >= self.acked * n:
                return True
            await asyncio.sleep(0.02)
        return False

    # modes --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        r = self.result
        r["started_at"] = time.time()
        try:
            if cfg.mode == "idle":
                await self._run_idle()
            elif cfg.mode == "storm":
                await self._run_storm()
            else:
                await self._run_flow()
        finally:
            self.publishing = False
            if self.lazy is not None:
                self.lazy.close()
            self.close_publishers()
            self.close_all()
        r["errors"] = dict(self.st.errors)
        r["server_closed"] = self.st.errors.get("server_close", 0)
        return r

    async def _setup(self) -> None:
        self.result["connect_seconds"] = round(await self.connect_all(60.0), 3)
        await asyncio.sleep(self.cfg.settle)

    async def _run_flow(self) -> None:
        cfg = self.cfg
        st = self.st
        r = self.result
        await self._setup()
        n = self.fanout
        await self.open_publishers(cfg.publishers or (cfg.window if cfg.mode == "saturate" else 4))
        self.publishing = True
        t0 = time.monotonic()
        t_start = t0 + cfg.warmup
        t_end = t_start + cfg.duration
        if cfg.mode == "saturate":
            st.on_gate = self._pump
            self._pump()
            await asyncio.sleep(max(0.0, t_start - time.monotonic()))
            a = Snapshot(st, self.server_pids, self.ksoftirqd)
            st.measuring = True
            await asyncio.sleep(max(0.0, t_end - time.monotonic()))
            st.measuring = False
            b = Snapshot(st, self.server_pids, self.ksoftirqd)
            self.publishing = False
            st.gate = 1 << 62
        else:
            if cfg.read_every:
                self.lazy = LazyReader(self.subs, cfg.read_every)
                r["lazy_subscribers"] = len(self.lazy.socks)
                lazy_task = asyncio.ensure_future(self.lazy.run())
                self._tasks.add(lazy_task)
                lazy_task.add_done_callback(self._tasks.discard)
            task = asyncio.ensure_future(self._publish_at_rate(cfg.rate, t_end))
            await asyncio.sleep(max(0.0, t_start - time.monotonic()))
            a = Snapshot(st, self.server_pids, self.ksoftirqd)
            st.measuring = True
            await asyncio.sleep(max(0.0, t_end - time.monotonic()))
            st.measuring = False
            b = Snapshot(st, self.server_pids, self.ksoftirqd)
            self.publishing = False
            await task
        drained = await self._wait_drained(cfg.drain)
        await asyncio.sleep(0.05)
        if self.lazy is not None:
            self.lazy.drain()
        self._measure(a, b)
        expected = self.acked * n
        per_sub = [s.n for s in self.subs]
        r.update(
            published=self.sent,
            published_ok=self.acked,
            publish_errors=self.pub_errors,
            publisher_late_ticks=self.late,
            delivered_total=st.delivered,
            expected_total=expected,
            lost=max(0, expected - st.delivered),
            extra=max(0, st.delivered - expected),
            drained=drained,
            per_subscriber_min=min(per_sub),
            per_subscriber_max=max(per_sub),
            subscribers_incomplete=sum(1 for k in per_sub if k != self.acked),
            closed_during_run=st.closed,
            exact=st.delivered == expected and drained,
        )

    def _measure(self, a: Snapshot, b: Snapshot) -> None:
        r = self.result
        wall = b.wall - a.wall
        delivered = b.delivered - a.delivered
        gen_cpu = (b.gen_cpu - a.gen_cpu) / wall
        cores: dict[str, float] = {}
        softirq: dict[str, float] = {}
        for core, (busy_b, total_b, soft_b) in b.cores.items():
            busy_a, total_a, soft_a = a.cores.get(core, (0, 0, 0))
            span = max(1, total_b - total_a)
            cores[core] = round((busy_b - busy_a) / span, 3)
            softirq[core] = round((soft_b - soft_a) / span, 3)
        proc_cpu = (b.server_cpu - a.server_cpu) / wall if self.server_pids else None
        # Network softirq work that the kernel defers to ksoftirqd on the server's core is
        # caused by the server's loopback sends but is not charged to the server's process
        # (softirq run inline is: this kernel has no IRQ time accounting). Count both.
        core = server_core(self.server_pids)
        ksoft = (b.ksoftirqd_cpu - a.ksoftirqd_cpu) / wall
        server_cpu = proc_cpu + ksoft if proc_cpu is not None else None
        per_cpu = delivered / (server_cpu * wall) if server_cpu else None
        lat = sorted(self.st.latencies_ns)
        r.update(
            window_seconds=round(wall, 3),
            deliveries=delivered,
            deliveries_per_s=delivered / wall,
            server_cpu_fraction=server_cpu,
            server_process_cpu_fraction=proc_cpu,
            ksoftirqd_cpu_fraction=ksoft,
            server_core=core,
            deliveries_per_server_cpu_s=per_cpu,
            publications_per_s=delivered / wall / self.fanout,
            publications_per_server_cpu_s=per_cpu / self.fanout if per_cpu else None,
            generator_cpu_fraction=gen_cpu,
            generator_saturated=gen_cpu >= 0.9,
            core_busy=cores,
            core_softirq=softirq,
            server_rss_bytes=proc_rss_bytes(self.server_pids),
            latency_samples=len(lat),
            latency_p50_ms=percentile(lat, 0.50) / 1e6 if lat else None,
            latency_p99_ms=percentile(lat, 0.99) / 1e6 if lat else None,
            latency_max_ms=lat[-1] / 1e6 if lat else None,
            loadavg=os.getloadavg(),
        )

    async def _run_idle(self) -> None:
        cfg = self.cfg
        r = self.result
        st = self.st
        # warm the server up with a few connections and one publication, then measure
        warm = LoadGen(dataclasses.replace(cfg, subscribers=min(50, cfg.subscribers)))
        await warm.connect_all(30.0)
        await warm.open_publishers(1)
        warm.publishing = True
        warm._publish()
        await warm._wait_drained(5.0)
        warm.close_publishers()
        warm.close_all()
        await asyncio.sleep(1.5)
        before = proc_rss_bytes(self.server_pids)
        await self._setup()
        await asyncio.sleep(2.0)
        after = proc_rss_bytes(self.server_pids)
        # check every connection is alive and subscribed: one publication, N deliveries
        await self.open_publishers(1)
        self.publishing = True
        self._publish()
        drained = await self._wait_drained(cfg.drain)
        r.update(
            rss_before_bytes=before,
            rss_after_bytes=after,
            rss_per_connection_bytes=(after - before) / cfg.subscribers,
            delivered_total=st.delivered,
            expected_total=self.acked * cfg.subscribers,
            exact=drained and st.delivered == self.acked * cfg.subscribers,
            generator_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            loadavg=os.getloadavg(),
        )

    async def _run_storm(self) -> None:
        cfg = self.cfg
        st = self.st
        r = self.result
        n = cfg.subscribers
        self.clients = [Client() for _ in range(n)]
        await self._setup()
        await self.open_publishers(4)
        self.publishing = True
        t0 = time.monotonic()
        task = asyncio.ensure_future(
            self._publish_at_rate(cfg.rate, t0 + cfg.storm_before + 60.0 + cfg.duration)
        )
        await asyncio.sleep(cfg.storm_before)
        received_before = st.delivered
        # drop every connection at once (RST), then reconnect all with their cursors
        st.caught_up = 0
        st.subscribed = 0
        st.stages = []
        for c in self.clients:
            c.caught = False
        self.close_all()
        redis = RedisWork(cfg.redis_port) if cfg.redis_port else None
        hubs = [p for p in self.server_pids if redis is None or p != redis.pid]
        hub_cpu_at_drop = proc_cpu_seconds(hubs)
        mark(cfg.storm_mark, "drop " + " ".join(map(str, hubs)))  # e.g. to attach a profiler
        snap_drop = Snapshot(st, self.server_pids, self.ksoftirqd)
        t_drop = snap_drop.wall
        offset_at_drop = st.pub_last_offset
        await asyncio.sleep(cfg.storm_away)  # publications go on: clients must resume them
        missed = st.pub_last_offset - offset_at_drop
        self.shift += 1  # with several nodes, every client resumes on another one
        connect_error = None
        try:
            await self.connect_all(max(cfg.reconnect_deadline * 3, 30.0))
        except RuntimeError as exc:
            connect_error = str(exc)
        t_reconnected = time.monotonic()
        wait_end = t_drop + max(cfg.reconnect_deadline * 3, 30.0)
        while st.caught_up < n and time.monotonic() < wait_end:
            await asyncio.sleep(0.01)
        t_caught = st.all_caught_at if st.caught_up >= n else float("nan")
        snap_caught = Snapshot(st, self.server_pids, self.ksoftirqd)
        mark(cfg.storm_mark, "caught")
        span = max(1e-6, snap_caught.wall - snap_drop.wall)
        # Per resumed session, drop to all caught up: less bound to the machine's load than
        # the seconds.
        resumed = max(1, st.caught_up)
        hub_cpu = proc_cpu_seconds(hubs) - hub_cpu_at_drop
        for name, k in (("tcp", 0), ("reply", 1)):
            ms = sorted(1000 * stage[k] for stage in st.stages) or [float("nan")]
            r[f"storm_{name}_ms"] = [round(ms[int(q * (len(ms) - 1))], 1) for q in (0.5, 0.9, 0.99)]
        r.update(
            storm_hub_cpu_seconds=round(hub_cpu, 3),
            storm_hub_cpu_ms_per_session=round(1000 * hub_cpu / resumed, 3),
        )
        if redis is not None:
            work = redis.since()
            r.update(
                storm_redis_cpu_seconds=round(work["cpu_seconds"], 3),
                storm_redis_cpu_ms_per_session=round(1000 * work["cpu_seconds"] / resumed, 4),
                storm_redis_reads_per_session=round(work["reads"] / resumed, 3),
                storm_redis_commands_per_session=round(work["commands"] / resumed, 2),
                storm_redis_commands=work["by_command"],
            )
        # keep publishing on the resumed connections, then stop and drain
        await asyncio.sleep(min(cfg.duration, 3.0))
        self.publishing = False
        await task
        end = time.monotonic() + cfg.drain
        while time.monotonic() < end:
            if len(self.idle_pubs) == len(self.pubs) and all(
                c.last >= st.pub_last_offset for c in self.clients
            ):
                break
            await asyncio.sleep(0.05)
        final = st.pub_last_offset
        behind = sum(final - c.last for c in self.clients if c.last < final)
        loss = st.gaps + behind
        reconnect_s = t_caught - t_drop
        r.update(
            published_ok=self.acked,
            final_offset=final,
            delivered_before_drop=received_before,
            published_while_away=missed,
            delivered_total=st.delivered,
            reconnect_connect_seconds=round(t_reconnected - t_drop, 3),
            reconnect_resume_seconds=round(reconnect_s, 3),
            reconnect_generator_cpu_fraction=(snap_caught.gen_cpu - snap_drop.gen_cpu) / span,
            reconnect_server_cpu_fraction=(
                (snap_caught.server_cpu - snap_drop.server_cpu) / span if self.server_pids else None
            ),
            caught_up=st.caught_up,
            gaps=st.gaps,
            duplicates=st.dups,
            resets=st.resets,
            epoch_changes=st.epoch_changes,
            behind_at_end=behind,
            lost=loss,
            connect_error=connect_error,
            passed=(
                connect_error is None
                and st.caught_up >= n
                and reconnect_s <= cfg.reconnect_deadline
                and loss == 0
                and st.dups == 0
                and st.resets == 0
            ),
            loadavg=os.getloadavg(),
        )


# --------------------------------------------------------------------------------------------
# Entry points


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    gen = LoadGen(cfg)
    try:
        return await asyncio.wait_for(gen.run(), cfg.timeout)
    except Exception as exc:  # report, do not crash: the runner records the failure
        traceback.print_exc()
        gen.close_all()
        gen.close_publishers()
        gen.result["error"] = f"{type(exc).__name__}: {exc}"
        gen.result["errors"] = dict(gen.st.errors)
        return gen.result


def run_sync(cfg: LoadConfig) -> dict[str, Any]:
    """Run one measurement on a fresh uvloop event loop (used by tests and the CLI)."""
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a clarion dependency on Linux
        return asyncio.run(run_load(cfg))
    return uvloop.run(run_load(cfg))


def parse_args(argv: list[str] | None = None) -> LoadConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = LoadConfig()
    p.add_argument("--server", choices=SERVERS, default=defaults.server)
    p.add_argument("--transport", choices=TRANSPORTS, default=defaults.transport)
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument(
        "--also-port",
        type=int,
        action="append",
        default=[],
        help="another node of the same hub (Redis engine); repeat for more",
    )
    p.add_argument("--mode", choices=MODES, default=defaults.mode)
    p.add_argument("--subscribers", type=int, default=defaults.subscribers)
    p.add_argument("--channels", type=int, default=defaults.channels)
    p.add_argument("--publishers", type=int, default=defaults.publishers)
    p.add_argument("--duration", type=float, default=defaults.duration)
    p.add_argument("--warmup", type=float, default=defaults.warmup)
    p.add_argument("--window", type=int, default=defaults.window)
    p.add_argument("--rate", type=float, default=defaults.rate)
    p.add_argument("--sample", type=float, default=defaults.sample)
    p.add_argument("--payload-size", type=int, default=defaults.payload_size)
    p.add_argument("--per-address", type=int, default=defaults.per_address)
    p.add_argument("--server-pid", type=int, action="append", default=[])
    p.add_argument("--timeout", type=float, default=defaults.timeout)
    p.add_argument("--reconnect-deadline", type=float, default=defaults.reconnect_deadline)
    p.add_argument("--storm-away", type=float, default=defaults.storm_away)
    p.add_argument("--redis-port", type=int, default=defaults.redis_port)
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=defaults.connect_concurrency,
        help="connections being opened and subscribed at once (storm: the reconnecting clients)",
    )
    p.add_argument(
        "--read-every",
        type=float,
        default=defaults.read_every,
        help="rate mode: subscribers that do not sample latency read their sockets every this "
        "many seconds, not on each arrival (0: on arrival)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=defaults.batch,
        help="clarion at saturation: publications per request (POST /api/publish_batch)",
    )
    p.add_argument(
        "--storm-mark",
        default=defaults.storm_mark,
        help="storm: append 'drop <hub pids>' to this file at the drop, 'caught' at the end",
    )
    a = p.parse_args(argv)
    return LoadConfig(
        server=a.server,
        transport=a.transport,
        host=a.host,
        port=a.port,
        also_ports=a.also_port,
        mode=a.mode,
        subscribers=a.subscribers,
        channels=a.channels,
        publishers=a.publishers,
        duration=a.duration,
        warmup=a.warmup,
        window=a.window,
        rate=a.rate,
        sample=a.sample,
        payload_size=a.payload_size,
        per_address=a.per_address,
        server_pids=a.server_pid,
        timeout=a.timeout,
        reconnect_deadline=a.reconnect_deadline,
        storm_away=a.storm_away,
        redis_port=a.redis_port,
        connect_concurrency=a.connect_concurrency,
        storm_mark=a.storm_mark,
        read_every=a.read_every,
        batch=a.batch,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    result = run_sync(cfg)
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
