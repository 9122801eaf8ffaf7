"""What one publication kept in the memory engine's history holds, its frame included.

The memory engine keeps each channel's last ``history_size`` publications, and a publication
delivered over WebSocket keeps its frame (encoded once, for every subscriber and for every
resume that reads it back). This publishes ``--publications`` 100-byte chat messages over
``--channels`` channels through a hub on the memory engine, encodes each one's WebSocket frame
as a delivery does, and reports the bytes ``tracemalloc`` finds allocated per publication::

    .venv/bin/python -m benchmarks.history_memory --publications 20000 --channels 100

``--data lists`` publishes compact JSON of 2,000 empty lists instead (6 KB; the shape that
decodes to the most objects per byte), and the report gives the JSON's own bytes beside.

``PYTHONPATH=<tree>/src`` in front measures another tree the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tracemalloc

LISTS: list[list[object]] = [[] for _ in range(2000)]


async def measure(publications: int, channels: int, shape: str = "chat") -> dict[str, float]:
    from clarion.asgi.wstransport import frame_format
    from clarion.core.hub import Hub
    from clarion.server.fastws import push_many
    from clarion.settings import NamespaceOptions, Settings

    size = -(-publications // channels)  # every publication stays in its channel's history
    hub = Hub(Settings(namespaces={"chat": NamespaceOptions(history_size=size)}))
    await hub.start()
    fmt = frame_format(push_many)
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        json_bytes = 0
        for n in range(publications):
            if shape == "lists":
                data: object = json.loads(json.dumps(LISTS))  # objects of its own, as parsed
            else:
                text = "hello there, how is it going today? fine"
                data = {"user": f"user-{n % 50}", "text": text}
            json_bytes += len(json.dumps(data, separators=(",", ":")))
            pub = await hub.publish(f"chat:room-{n % channels}", data)
            pub.encoded(fmt, fmt.encode)  # what its first delivery keeps on it
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        await hub.close()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {
        "publications": publications,
        "bytes_per_publication": round(held / publications),
        "data_json_bytes_per_publication": round(json_bytes / publications),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--publications", type=int, default=20000)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--data", choices=("chat", "lists"), default="chat")
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.publications, a.channels, a.data))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
