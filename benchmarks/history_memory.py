"""What one publication kept in the memory engine's history holds, its frame included.

The memory engine keeps each channel's last ``history_size`` publications, and a publication
delivered over WebSocket keeps its frame (encoded once, for every subscriber and for every
resume that reads it back). This publishes ``--publications`` 100-byte chat messages over
``--channels`` channels through a hub on the memory engine, encodes each one's WebSocket frame
as a delivery does, and reports the bytes ``tracemalloc`` finds allocated per publication::

    .venv/bin/python -m benchmarks.history_memory --publications 20000 --channels 100

``PYTHONPATH=<tree>/src`` in front measures another tree the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tracemalloc


async def measure(publications: int, channels: int) -> dict[str, float]:
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
        for n in range(publications):
            data = {"user": f"user-{n % 50}", "text": "hello there, how is it going today? fine"}
            pub = await hub.publish(f"chat:room-{n % channels}", data)
            pub.encoded(fmt, fmt.encode)  # what its first delivery keeps on it
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        await hub.close()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {"publications": publications, "bytes_per_publication": round(held / publications)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--publications", type=int, default=20000)
    p.add_argument("--channels", type=int, default=100)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.publications, a.channels))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
