"""A webhook URL's query often carries the receiver's own credential: no log line of the
webhook service shows it, whatever happens to the endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from clarion import Settings
from clarion.webhooks import generate_secret

from ..conftest import start_hub, stop_hub
from .conftest import FAST, wait_state
from .receiver import OK, Answer, Received, Receiver

QUERY_SECRET = "receiver-S3CR3T-0123456789"


def settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        webhook_allow_hosts=["127.0.0.1"],
        webhook_delivery={**FAST, "retry_window": 0.3},
        **extra,
    )


async def test_no_log_line_shows_a_webhook_urls_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Configured and registered endpoints with a query, through failures, a redirect that
    repeats the query, dead letters, 410 Gone, deletion and removal from the configuration."""
    caplog.set_level(logging.DEBUG, logger="clarion")
    secret = generate_secret()

    def behave(received: Received) -> Answer:
        data = received.payload.get("data")
        if data == "fail":
            return Answer(status=500)
        if data == "redirect":  # to https, keeping the query, as front ends do
            return Answer(status=307, location=f"https://receiver.example/hook?t={QUERY_SECRET}")
        if data == "gone":
            return Answer(status=410)
        return OK

    async with Receiver(behave) as receiver:
        receiver.secret = secret
        url = f"{receiver.url}?token={QUERY_SECRET}"
        entry = {"url": url, "channels": ["logged:*"], "secret": secret, "id": "wh_configured"}
        hub = await start_hub(settings(tmp_path, webhooks=[entry]))
        try:
            async with hub.http() as http:
                r = await http.post(
                    "/api/webhooks",
                    json={"url": url + "&api=1", "channels": ["logged:*"], "secret": secret},
                )
                assert r.status_code == 200, r.text
                registered = r.json()["id"]
                for data in ("delivered", "fail", "redirect", "gone"):
                    await hub.publish("logged:a", data)
                for endpoint in ("wh_configured", registered):
                    await wait_state(hub, endpoint, lambda s: s["disabled"])
                await hub.publish("logged:a", "left queued")  # dropped with its endpoint
                assert (await http.delete(f"/api/webhooks/{registered}")).status_code == 200
        finally:
            await stop_hub(hub)
        # The operator removes the entry: dropped at the next start, and logged so.
        again = await start_hub(settings(tmp_path))
        await stop_hub(again)
    formatter = logging.Formatter()
    lines = [formatter.format(r) for r in caplog.records if r.name.startswith("clarion")]
    said = "\n".join(lines)
    # The paths were driven: each of these is a line about one of the endpoints.
    for words in ("failed: HTTP 500", "redirect to", "answered 410 Gone", "no longer configured"):
        assert words in said, words
    assert [line for line in lines if QUERY_SECRET in line] == []
