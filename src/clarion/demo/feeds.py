"""The demo's publishers: ticker prices from inside the hub, and simulated IoT devices that
connect to it as clients, so that their presence says whether they are online."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clarion.core.auth import mint_token
from clarion.core.hub import Hub

if TYPE_CHECKING:
    from clarion.client import Subscription

log = logging.getLogger("clarion.demo")

# symbol → (opening price, decimals)
SYMBOLS = {
    "BTC-USD": (64000.0, 2),
    "ETH-USD": (3400.0, 2),
    "ACME": (182.5, 2),
    "EUR-USD": (1.08, 5),
}
TICK = 0.25  # seconds between two prices of a symbol
VOLATILITY = 0.0015  # relative standard deviation of one step


async def ticker(hub: Hub, interval: float = TICK) -> None:
    """Each symbol's price, a random walk, published on ``ticker:<symbol>`` several times a
    second: from the hub's own process, as a backend would with ``hub.publish``."""
    rng = random.Random()
    prices = {symbol: start for symbol, (start, _) in SYMBOLS.items()}
    while True:
        for symbol, (start, decimals) in SYMBOLS.items():
            step = rng.gauss(0, VOLATILITY) - (prices[symbol] / start - 1) * 0.01  # drift back
            prices[symbol] *= 1 + step
            price = round(prices[symbol], decimals)
            data = {"symbol": symbol, "price": price, "open": start, "decimals": decimals}
            await hub.publish(f"ticker:{symbol}", data)
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    label: str
    temperature: float  # °C around which it reads
    humidity: float  # %
    online: float | None = None  # seconds it stays connected before dropping off, if it does
    offline: float = 8.0  # seconds it then stays away


DEVICES = (
    DeviceSpec("greenhouse", "Greenhouse", 24.0, 70.0),
    DeviceSpec("server-room", "Server room", 19.0, 40.0),
    DeviceSpec("freezer", "Freezer", -18.0, 30.0, online=25.0),
)
RATE = 10  # telemetry per second, per device


def device_user(spec: DeviceSpec) -> str:
    return f"device:{spec.id}"


def telemetry(spec: DeviceSpec, t: float, rng: random.Random) -> dict[str, float]:
    """One reading: a slow swing around the device's levels, plus noise."""
    swing = math.sin(t / 7 + len(spec.id))
    return {
        "temperature": round(spec.temperature + 2.5 * swing + rng.gauss(0, 0.15), 2),
        "humidity": round(min(100.0, spec.humidity + 6 * swing + rng.gauss(0, 0.5)), 1),
    }


async def device(url: str, secret: str, spec: DeviceSpec, rate: float = RATE) -> None:
    """A device: connected over WebSocket with its own token, subscribed to its channel
    ``iot:<id>`` (so presence lists it while it is online), publishing a reading ``rate`` times
    a second; one with ``online`` set drops off now and then and comes back."""
    from clarion.client import connect

    channel = f"iot:{spec.id}"
    user = device_user(spec)
    rng = random.Random()

    def token() -> str:
        info = {"name": spec.label, "device": True}
        return mint_token(secret, user, [channel], publish=[channel], ttl=3600, info=info)

    while True:
        try:
            async with (
                connect(url, token=token, transport="ws") as client,
                client.subscribe(channel) as sub,
            ):
                drain = asyncio.create_task(_drain(sub))
                try:
                    until = None if spec.online is None else time.monotonic() + spec.online
                    while until is None or time.monotonic() < until:
                        reading = telemetry(spec, time.time(), rng)
                        await client.publish(channel, {"device": spec.id, **reading})
                        await asyncio.sleep(1 / rate)
                finally:
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drain
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the hub is going away or busy: come back later
            log.debug("demo device %s: %s", spec.id, exc)
        await asyncio.sleep(spec.offline if spec.online is not None else 2.0)


async def _drain(sub: Subscription) -> None:
    # The device reads its own channel only to be present in it; what arrives is dropped, so
    # its buffer never fills (a full one would unsubscribe it).
    async for _ in sub:
        pass
