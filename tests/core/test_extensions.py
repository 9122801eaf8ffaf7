"""The hub's extension points: what is attached to it is started and closed with it, found by
its type, and serves its routes through the hub's app — and a hub without any has none of it."""

from __future__ import annotations

import asyncio

import pytest

from clarion import Hub, NotFound, Settings
from clarion.core.auth import Credentials
from clarion.webhooks import WebhookService

from ..conftest import start_hub, stop_hub
from .test_resume import Recorder


class Recording:
    """An extension that notes what the hub looked like when it was started and closed."""

    def __init__(self, hub: Hub, name: str, log: list[tuple[str, str, object]]) -> None:
        self.hub, self.name, self.log = hub, name, log

    async def start(self) -> None:
        # Started after the hub: its engine answers already.
        history, _ = await self.hub.history("c:x")
        self.log.append(("start", self.name, history.position.offset))

    async def close(self) -> None:
        # Closed after the hub: no session is left.
        self.log.append(("close", self.name, len(self.hub.sessions)))


class Failing(Recording):
    async def start(self) -> None:
        raise RuntimeError("cannot start")


async def test_extensions_start_after_the_hub_and_close_after_it_in_reverse_order() -> None:
    log: list[tuple[str, str, object]] = []
    hub = Hub(
        Settings(),
        extensions=[lambda h: Recording(h, "a", log), lambda h: Recording(h, "b", log)],
    )
    await hub.start()
    await hub.publish("c:x", 1)
    hub.open_session(Recorder(), Credentials(user="u", trusted=True))
    await hub.close()
    assert log == [
        ("start", "a", 0),
        ("start", "b", 0),
        ("close", "b", 0),
        ("close", "a", 0),
    ]


async def test_an_extension_that_cannot_start_leaves_the_hub_closed() -> None:
    log: list[tuple[str, str, object]] = []
    hub = Hub(
        Settings(),
        extensions=[lambda h: Recording(h, "a", log), lambda h: Failing(h, "f", log)],
    )
    with pytest.raises(RuntimeError, match="cannot start"):
        await hub.start()
    assert log == [("start", "a", 0), ("close", "f", 0), ("close", "a", 0)]
    # Nothing of the hub runs on: its timers are stopped.
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert not names & {"clarion-hub-tick", "clarion-revocation-sync", "clarion-node-reporter"}


async def test_the_standard_hub_has_webhooks_and_serves_their_routes() -> None:
    running = await start_hub(Settings(api_key="k" * 32))
    try:
        assert isinstance(running.hub.extension(WebhookService), WebhookService)
        async with running.http() as http:
            r = await http.get("/api/webhooks", headers={"Authorization": f"apikey {'k' * 32}"})
        assert r.status_code == 200 and r.json() == {"webhooks": []}
    finally:
        await stop_hub(running)


async def test_a_hub_of_the_core_alone_has_no_webhooks_and_no_routes_for_them() -> None:
    running = await start_hub(hub=Hub(Settings(api_key="k" * 32), extensions=()))
    try:
        with pytest.raises(NotFound):
            running.hub.extension(WebhookService)
        async with running.http() as http:
            r = await http.get("/api/webhooks", headers={"Authorization": f"apikey {'k' * 32}"})
            assert r.status_code == 404
            published = await http.post(
                "/api/publish",
                json={"channel": "c:x", "data": 1},
                headers={"Authorization": f"apikey {'k' * 32}"},
            )
        assert published.status_code == 200  # the rest of the hub is all there
    finally:
        await stop_hub(running)
