"""SSRF defences: refused at registration, refused at connect time, redirects never followed."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clarion.errors import BadRequest
from clarion.webhooks.targets import (
    AllowList,
    UnsafeTarget,
    check_address,
    parse_target,
    refusal,
)
from clarion.webhooks.transport import GuardedTransport

from ..conftest import RunningHub, timeout
from .conftest import register, wait_state
from .receiver import Answer, Receiver

UNSAFE_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8000/hook",
    "http://localhost/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::1]/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a00:1]/",
    "https://[ff02::1]/",
]


@pytest.mark.parametrize(
    ("url", "normalised", "address"),
    [
        ("http://2130706433/x", "http://127.0.0.1/x", "127.0.0.1"),
        ("http://0177.0.0.1", "http://127.0.0.1/", "127.0.0.1"),
        ("http://0x7f.0.0.1:81/a?b=c", "http://127.0.0.1:81/a?b=c", "127.0.0.1"),
        ("http://127.1/", "http://127.0.0.1/", "127.0.0.1"),
        ("HTTPS://Example.COM/x", "https://example.com/x", None),
        ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
        ("http://[::ffff:7f00:1]/", "http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
        ("http://deadbeef.example/", "http://deadbeef.example/", None),
    ],
)
def test_ip_literals_are_read_as_libc_reads_them(
    url: str, normalised: str, address: str | None
) -> None:
    target = parse_target(url)
    assert target.url == normalised
    assert target.address == (ipaddress.ip_address(address) if address else None)


@pytest.mark.parametrize(
    "url",
    ["ftp://x/", "http://", "http://u:p@example.com/", "http://[fe80::1%25eth0]/", "not a url"],
)
def test_malformed_targets_are_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        parse_target(url)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::ffff:127.0.0.1", "loopback address inside an IPv6 address"),
        ("2002:a00:1::", "private address inside an IPv6 address"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("239.1.1.1", "multicast"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        # Classed differently by different Pythons, or not at all: refused on every one.
        ("192.0.0.8", "address"),
        ("192.0.0.9", "address"),
        ("192.88.99.1", "address"),
        ("fec0::1", "address"),
        ("3fff::1", "address"),
        ("5f00::1", "address"),
        ("2001:db8::1", "address"),
    ],
)
def test_address_policy(address: str, reason: str | None) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_allow_list_takes_hosts_addresses_and_networks() -> None:
    allow = AllowList(["hooks.internal", "127.0.0.1", "10.1.0.0/16", "[::1]"])
    check_address("hooks.internal", ipaddress.ip_address("10.9.9.9"), allow)
    check_address("x", ipaddress.ip_address("127.0.0.1"), allow)
    check_address("x", ipaddress.ip_address("::ffff:127.0.0.1"), allow)
    check_address("x", ipaddress.ip_address("10.1.200.3"), allow)
    check_address("x", ipaddress.ip_address("::1"), allow)
    with pytest.raises(UnsafeTarget):
        check_address("x", ipaddress.ip_address("10.2.0.1"), allow)
    with pytest.raises(UnsafeTarget):
        check_address("other.internal", ipaddress.ip_address("127.0.0.2"), allow)


async def test_unsafe_targets_are_refused_at_registration(make_hub: Callable[..., Any]) -> None:
    running: RunningHub = await make_hub(webhook_allow_hosts=[])
    async with running.http() as http:
        for url in UNSAFE_URLS:
            r = await http.post("/api/webhooks", json={"url": url, "channels": ["c"]})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["code"] == "unsafe_target", (url, r.text)
        assert (await http.get("/api/webhooks")).json() == {"webhooks": []}


async def test_connections_are_checked_after_resolution() -> None:
    """The transport itself refuses, whatever was checked before: the name is resolved again."""
    async with Receiver() as receiver:
        transport = GuardedTransport(AllowList([]), max_connections=2)
        async with httpx.AsyncClient(transport=transport, timeout=timeout(5)) as client:
            for host in ("127.0.0.1", "localhost", "2130706433"):
                with pytest.raises(UnsafeTarget):
                    await client.post(f"http://{host}:{receiver.port}/hook", content=b"{}")
        allowed = GuardedTransport(AllowList(["localhost"]), max_connections=2)
        async with httpx.AsyncClient(transport=allowed, timeout=timeout(5)) as client:
            r = await client.post(f"http://localhost:{receiver.port}/hook", content=b"{}")
            assert r.status_code == 400  # reached: the receiver refuses the unsigned request
        assert len(receiver.received) == 1


async def test_redirects_are_not_followed(webhook_hub: RunningHub) -> None:
    async with Receiver() as inner:
        target = f"http://localhost:{inner.port}/hook"
        async with Receiver(lambda r: Answer(status=307, location=target)) as outer:
            hook = await register(webhook_hub, outer, ["redir"])
            await webhook_hub.publish("redir", "x")
            await outer.wait_until(lambda: len(outer.received) >= 3)
            current = await wait_state(webhook_hub, hook["id"], lambda s: s["last_error"])
            error = current["last_error"]
            assert "307 redirect" in error and "not followed" in error
            assert current["backlog"] == 1
            assert inner.received == []
