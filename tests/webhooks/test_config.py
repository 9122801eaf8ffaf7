"""Endpoints from clarion.toml, restarts in one process, and one hub per data_dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clarion import ConfigError, Hub, Settings
from clarion.webhooks import generate_secret

from ..conftest import RunningHub, start_hub, stop_hub
from .conftest import FAST, register
from .receiver import Receiver


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        webhook_allow_hosts=["127.0.0.1"],
        webhook_delivery=FAST,
        **extra,
    )


async def test_configured_endpoints_deliver_and_cannot_be_deleted_via_the_api(
    hub_factory: Callable[..., Any], tmp_path: Path
) -> None:
    secret = generate_secret()
    async with Receiver() as receiver:
        receiver.secret = secret
        entry = {"url": receiver.url, "channels": ["cfg:*"], "secret": secret}
        running: RunningHub = await hub_factory(settings(tmp_path, webhooks=[entry]))
        await running.publish("cfg:1", "from config")
        assert (await receiver.wait_acknowledged(1))[0].payload["data"] == "from config"
        async with running.http() as http:
            (hook,) = (await http.get("/api/webhooks")).json()["webhooks"]
            assert hook["source"] == "config" and hook["url"] == receiver.url
            r = await http.delete(f"/api/webhooks/{hook['id']}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "configured_webhook"


async def test_unsafe_configured_endpoint_stops_the_start(tmp_path: Path) -> None:
    entry = {"url": "http://169.254.169.254/", "channels": ["a"]}
    hub = Hub(settings(tmp_path, webhooks=[entry]))
    with pytest.raises(ConfigError, match="link-local"):
        await hub.start()
    assert not hub._started
    # Nothing is left holding the data_dir: a corrected config starts on it.
    fixed = Hub(settings(tmp_path))
    await fixed.start()
    await fixed.close()


async def test_restart_keeps_endpoints_pending_deliveries_and_event_versions(
    tmp_path: Path,
) -> None:
    async with Receiver() as receiver:
        first = await start_hub(settings(tmp_path))
        try:
            hook = await register(first, receiver, ["chat:*"], events=["connect"])
            async with first.ws():
                pass
            await receiver.wait_acknowledged(1)
        finally:
            await stop_hub(first)
        second = await start_hub(settings(tmp_path))
        try:
            async with second.http() as http:
                (again,) = (await http.get("/api/webhooks")).json()["webhooks"]
            assert again["id"] == hook["id"] and again["events"] == ["connect"]
            async with second.ws():
                pass
            await second.publish("chat:x", "after restart")
            got = await receiver.wait_acknowledged(3)
            assert [g.payload.get("type") for g in got] == ["connect", "connect", None]
            assert got[1].payload["version"] > got[0].payload["version"]
            assert got[2].payload["data"] == "after restart"
        finally:
            await stop_hub(second)


async def test_a_data_dir_serves_one_hub_at_a_time(
    hub_factory: Callable[..., Any], tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        running = await hub_factory(settings(tmp_path))
        await register(running, receiver, ["a"])
        other = Hub(settings(tmp_path))
        with pytest.raises(ConfigError, match="in use by another clarion hub") as refused:
            await other.start()
        # It names the setting that moves the directory, by its variable too.
        assert "CLARION_DATA_DIR" in str(refused.value), refused.value


async def test_an_entry_removed_from_the_config_is_dropped(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        entry = {"url": receiver.url, "channels": ["a"], "id": "wh_fixed"}
        first = await start_hub(settings(tmp_path, webhooks=[entry]))
        async with first.http() as http:
            ids = [h["id"] for h in (await http.get("/api/webhooks")).json()["webhooks"]]
        await stop_hub(first)
        assert ids == ["wh_fixed"]
        second = await start_hub(settings(tmp_path))
        try:
            async with second.http() as http:
                assert (await http.get("/api/webhooks")).json() == {"webhooks": []}
        finally:
            await stop_hub(second)


async def test_the_start_line_counts_the_configured_endpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [{"url": "http://127.0.0.1:9/a", "channels": ["a"]}]
    for expected in ("1 endpoint, 0 deliveries pending", "2 endpoints, 0 deliveries pending"):
        caplog.clear()
        with caplog.at_level("INFO", logger="clarion.webhooks"):
            hub = await start_hub(settings(tmp_path, webhooks=entries))
            await stop_hub(hub)
        # On a fresh data_dir too: counted once the config's endpoints are in.
        assert f"webhooks: {expected}" in caplog.messages
        entries = [*entries, {"url": "http://127.0.0.1:9/b", "channels": ["b"]}]
