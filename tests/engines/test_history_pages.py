"""A history page read in pieces from Redis never holds a hole: trimmed between two pieces, the
page ends where the stream was cut, and the next read from its cursor is told (a reset)."""

from __future__ import annotations

from typing import Any

from clarion import Hub, Settings
from clarion.protocol.cursor import encode_single

from ..redis_fixture import RedisServer


async def test_a_page_trimmed_between_its_pieces_ends_at_the_cut(
    redis_server: RedisServer,
) -> None:
    hub = Hub(Settings(engine=redis_server.url, namespaces={"c": {"history_size": 100}}))
    await hub.start()
    try:
        for n in range(100):
            await hub.publish("c:a", {"n": n, "pad": "x" * 100})
        engine = hub.engine
        read = engine.history
        reads = 0

        async def read_then_publish(*args: Any, **kwargs: Any) -> Any:
            # Between the page's first piece and the next, a hundred more publications trim
            # the stream past where the first piece ended: the race, made to happen.
            nonlocal reads
            reads += 1
            history = await read(*args, **kwargs)
            if reads == 1:
                for n in range(100, 200):
                    await hub.publish("c:a", {"n": n, "pad": "x" * 100})
            return history

        engine.history = read_then_publish  # type: ignore[method-assign]
        top = (await read("c:a", hub.options("c:a"), limit=1, reverse=True)).position
        page, reason = await hub.history(
            "c:a", since=encode_single("c:a", top.epoch, 5), limit=1000
        )
        offsets = [p.offset for p in page.publications]
        assert reads == 2 and reason is None
        assert offsets == list(range(6, 6 + len(offsets)))  # no hole
        assert offsets[-1] < 101  # it ended at the cut, before what the trim left
        engine.history = read  # type: ignore[method-assign]
        # The next page, from the last one's end, is told that it missed something.
        after = encode_single("c:a", top.epoch, offsets[-1])
        _, reason = await hub.history("c:a", since=after, limit=1000)
        assert reason == "trimmed"
    finally:
        await hub.close()
