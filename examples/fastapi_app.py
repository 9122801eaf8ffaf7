"""clarion mounted inside a FastAPI application.

It needs FastAPI and uvicorn, which the ``examples`` extra brings. From the checkout:

    .venv/bin/pip install -e '.[examples]'
    .venv/bin/uvicorn examples.fastapi_app:app --port 8001 --timeout-graceful-shutdown 5

Then subscribe at ws://127.0.0.1:8001/rt/ws (or `clarion subscribe orders:new
--url http://127.0.0.1:8001/rt`) and create an order:

    curl -XPOST localhost:8001/orders -H 'content-type: application/json' -d '{"item": "tea"}'

(``--timeout-graceful-shutdown``: uvicorn otherwise waits at Ctrl-C for every open SSE stream
to end by itself; see docs/deployment.md, "A hub inside your own application".)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from clarion import Hub, Settings

hub = Hub(Settings())
app = FastAPI(title="shop", lifespan=hub.lifespan)
app.mount("/rt", hub.asgi_app())


@app.post("/orders")
async def create_order(order: dict[str, Any]) -> dict[str, Any]:
    # Application code publishes directly: no HTTP round trip to the hub.
    pub = await hub.publish("orders:new", order)
    return {"order": order, "offset": pub.offset}
