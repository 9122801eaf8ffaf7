"""Smoke tests of the benchmark harness (benchmarks/loadgen.py).

The byte-level tests check the generator's cheap counting paths (WebSocket frame-header walk,
SSE ``data:`` count) on hand-made streams. The smoke test runs the generator against a real
``clarion serve`` on loopback with tiny sizes and checks only that it counts exactly:
deliveries = publications x subscribers. No timing assertions.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import loadgen
from benchmarks.loadgen import LoadConfig, SseSubscriber, Stats, WsSubscriber, server_frame


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return None


def feed(proto: Any, data: bytes, cut: int | None) -> None:
    """Deliver ``data`` through the shared receive buffer, in two reads split at ``cut``."""
    parts = [data] if cut is None else [data[:cut], data[cut:]]
    for part in parts:
        if part:
            loadgen._BUF[: len(part)] = part
            proto.buffer_updated(len(part))


def ws_stream() -> tuple[bytes, int]:
    """Server frames: small, 16-bit-length, 64-bit-length and fragmented messages, a ping."""
    frames = [
        server_frame(b'{"t":1,"s":1}'),
        server_frame(b"x" * 200),
        server_frame(b"\x81" * 129, opcode=2),  # payload bytes that look like headers
        server_frame(b"ping!", opcode=9),
        server_frame(b"y" * 70000),
        server_frame(b"part1-", opcode=1, fin=False),
        server_frame(b"part2", opcode=0, fin=True),
        server_frame(b'{"t":2,"s":2}'),
    ]
    return b"".join(frames), 6


def test_ws_header_walk_counts_exactly_at_every_split() -> None:
    stream, expected = ws_stream()
    cuts = [None, *range(1, 300), *range(len(stream) - 300, len(stream))]

    async def run() -> None:
        for cut in cuts:
            st = Stats()
            proto = WsSubscriber(st, b"", None, sampled=False)
            transport = FakeTransport()
            proto.transport = transport  # type: ignore[assignment]
            proto.state = loadgen.OPEN
            feed(proto, stream, cut)
            assert st.delivered == expected, cut
            assert proto.n == expected
            # the ping was answered with a masked pong echoing its payload (zero mask key)
            assert transport.written == [b"\x8a\x85\x00\x00\x00\x00ping!"], cut
            assert proto.skip == 0 and proto.carry == b""

    asyncio.run(run())


def test_ws_full_parse_after_handshake_and_reply() -> None:
    """Handshake + subscribe reply + publications arriving in one read (clarion's shape)."""
    reply = server_frame(b'{"id":1,"ok":{}}')
    pubs = [
        server_frame(b'{"channel":"bench","offset":%d,"data":{"t":5,"s":1}}' % i)
        for i in range(1, 4)
    ]
    data = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + reply + b"".join(pubs)
    )

    async def run() -> None:
        st = Stats()
        st.measuring = True
        proto = WsSubscriber(st, b"GET", b"SUB", sampled=True)
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        feed(proto, data, 70)
        assert transport.written == [b"GET", b"SUB"]
        assert proto.ready.done() and proto.ready.result() is True
        assert st.subscribed == 1
        assert st.delivered == 3
        assert len(st.latencies_ns) == 3

    asyncio.run(run())


def test_sse_count_across_reads() -> None:
    events = b"".join(
        b'id: c%d\nevent: message\ndata: {"t":1,"s":%d}\n\n' % (i, i) for i in range(5)
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nretry: 1000\n\n"
    data = head + events

    async def run() -> None:
        for cut in range(1, len(data)):
            for sampled in (False, True):
                st = Stats()
                proto = SseSubscriber(st, b"GET", sampled)
                proto.connection_made(FakeTransport())  # type: ignore[arg-type]
                feed(proto, data, cut)
                assert st.subscribed == 1
                assert st.delivered == 5, (cut, sampled)

    asyncio.run(run())


def test_mask_frame_roundtrip() -> None:
    payload = b'{"id":1,"op":"subscribe","channel":"bench"}'
    frame = loadgen.mask_frame(payload)
    assert frame[0] == 0x81 and frame[1] == 0x80 | len(payload)
    key = frame[2:6]
    unmasked = bytes(b ^ key[i % 4] for i, b in enumerate(frame[6:]))
    assert unmasked == payload
    assert len(loadgen.make_payload(7, 100)) == 100


@pytest.fixture
def clarion_server(tmp_path: Path) -> Any:
    pytest.importorskip("clarion", reason="clarion is not importable")
    from benchmarks import servers

    server = servers.start_server("clarion", "ws", tmp_path, core=None, ready_timeout=30.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("transport", "mode", "read_every"),
    [
        ("ws", "saturate", 0.0),
        ("ws", "rate", 0.0),
        ("sse", "saturate", 0.0),
        # subscribers that do not sample read on a timer: still counted exactly
        ("ws", "rate", 0.05),
        ("sse", "rate", 0.05),
    ],
)
def test_loadgen_counts_clarion_deliveries_exactly(
    clarion_server: Any, transport: str, mode: str, read_every: float
) -> None:
    cfg = LoadConfig(
        server="clarion",
        transport=transport,
        port=clarion_server.port,
        mode=mode,
        subscribers=20,
        duration=2.0,
        warmup=0.0,
        window=4,
        rate=50.0,
        sample=0.25,
        per_address=8,
        server_pids=[clarion_server.pid],
        timeout=60.0,
        read_every=read_every,
    )
    result = loadgen.run_sync(cfg)
    assert "error" not in result, result
    if read_every:
        assert result["lazy_subscribers"] == 15  # all but the sampled quarter
    assert result["published_ok"] > 0
    assert result["publish_errors"] == 0
    assert result["delivered_total"] == result["published_ok"] * 20, result
    assert result["exact"] is True
    assert result["per_subscriber_min"] == result["per_subscriber_max"] == result["published_ok"]
    assert result["latency_samples"] > 0


def test_deflate_benchmark_tables(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import deflate as bench

    assert bench.main(["--no-cpu"]) == 0
    out = capsys.readouterr().out
    assert "| chat | `/ws` |" in out and "| ticker | `/stomp` |" in out
    assert "| **frame** | **245** (payload 241) |" in out


@pytest.mark.parametrize(
    ("client_process", "batch"),
    [(False, 0), (True, 0), (True, 10)],
    ids=["one-process", "client-process", "batches"],
)
def test_publish_cost_delivers_every_publication(
    client_process: bool,
    batch: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("clarion", reason="clarion is not importable")
    import json

    from benchmarks import publish_cost

    # The client process is started with ``-m benchmarks.publish_cost``: from the repository.
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    argv = ["--requests", "60", "--channels", "6", "--connections", "4"]
    argv += ["--client-process"] if client_process else []
    argv += ["--batch", str(batch)] if batch else []
    assert publish_cost.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delivered"] == 60 and result["client_process"] is client_process
    assert result["batch"] == batch


def test_the_in_process_fanout_benchmarks_run(capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmarks that time the fan-out's loops over outboxes with no socket: they run on
    the outbox as it is (a stand-in that lacks what the outbox reads fails here, not later)."""
    import asyncio

    from benchmarks import fanout_loop, stomp_frame

    asyncio.run(stomp_frame.main(20, 1))
    assert "stomp, two pushes" in capsys.readouterr().out
    assert asyncio.run(fanout_loop._measure(50, 3, 2)) > 0


@pytest.mark.parametrize("transport", ["stomp", "poll"])
def test_drop_garbage_opens_and_drops_every_session(
    transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The transports the load generator does not speak: its own clients open every session
    (it waits until the hub counts them all) and drop them."""
    from benchmarks import drop_garbage

    assert drop_garbage.main(["--connections", "20", "--transport", transport, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"connections: 20 ({transport})" in out
    assert "after the drop" in out


def test_publish_cost_fails_at_once_when_the_hub_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused publication never reaches its subscriber: the run says so, at once, rather
    than waiting ten minutes for its frame."""
    pytest.importorskip("clarion", reason="clarion is not importable")
    from benchmarks import publish_cost

    monkeypatch.setattr(publish_cost, "make_payload", lambda n, size: b'"' + b"x" * 70_000 + b'"')
    with pytest.raises(RuntimeError, match="too_large"):
        publish_cost.main(["--requests", "20", "--channels", "2", "--connections", "2"])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_redis_many_rooms_benchmarks_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The position check's and the presence burst's benchmarks run to their end on a Redis of
    their own: every channel checked each round, every join heard, every listing answered."""
    import json

    from benchmarks import position_check_cost, presence_burst

    assert position_check_cost.main(["--channels", "300", "--rounds", "2"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["channels"] == 300 and len(checked["us_per_channel"]) == 2
    # The hub is started with ``-m clarion``: from the repository, as a user runs it.
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert presence_burst.main(["--clients", "20", "--rooms", "3"]) == 0
    burst = json.loads(capsys.readouterr().out)
    assert burst["redis_publish_commands"] >= 20 * 3, burst  # one PUBLISH per join at least
    assert burst["seconds_to_last_join"] >= burst["seconds_to_all_subscribed"] > 0, burst
