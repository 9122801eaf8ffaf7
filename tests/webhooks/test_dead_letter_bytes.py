"""The SQLite outbox's dead letters within ``max_dead_letters`` and ``max_dead_letter_bytes``:
its running count of their bytes checked against what the file holds, after every step of
random sequences of dead letters written, pending deliveries buried and dead letters revived."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clarion.webhooks.endpoint import Delivery
from clarion.webhooks.sqlite_outbox import SQLiteOutbox

KEEP, KEEP_BYTES = 6, 5_000
ENDPOINTS = ("a", "b")


def _delivery(rng: random.Random, n: int, *, dead: bool) -> Delivery:
    return Delivery(
        endpoint=rng.choice(ENDPOINTS),
        msg_id=f"msg_{n}",
        kind="publication",
        body=b"x" * rng.choice((0, 10, 700, 2_000, 6_000)),
        created_at=float(n),
        dead_at=float(n) if dead else None,
        last_error="test" if dead else None,
    )


def _check(outbox: SQLiteOutbox, told: dict[str, int]) -> None:
    for endpoint in ENDPOINTS:
        rows = outbox.db.execute(
            "SELECT seq, length(body) FROM dead_letters WHERE endpoint = ? ORDER BY seq",
            (endpoint,),
        ).fetchall()
        held = sum(size for _, size in rows)
        known = outbox._dead.held.get(endpoint)
        assert known is None or known == held, (endpoint, known, held)
        assert len(rows) <= KEEP
        assert held <= KEEP_BYTES or len(rows) == 1, rows
        # What the outbox tells of the dead letters it holds, after each write giving more.
        assert told.get(endpoint, 0) == len(rows), (endpoint, told, len(rows))


@pytest.mark.parametrize("seed", range(6))
async def test_dead_letter_bytes_follow_what_is_held(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    outbox = SQLiteOutbox(tmp_path, max_dead_letters=KEEP, max_dead_letter_bytes=KEEP_BYTES)
    told: dict[str, int] = {}
    outbox.on_dead_counted = told.__setitem__
    await outbox.open()
    try:
        pending: list[Delivery] = []
        for n in range(150):
            step = rng.random()
            if step < 0.45:  # dead at once, as intake makes them (a backlog full)
                await outbox.enqueue([_delivery(rng, n, dead=True)])
            elif step < 0.75:
                (stored,) = [await outbox.enqueue([_delivery(rng, n, dead=False)])]
                pending += stored
            elif step < 0.9 and pending:  # out of retries
                delivery = pending.pop(rng.randrange(len(pending)))
                delivery.dead_at = float(n)
                await outbox.bury(delivery)
            else:
                endpoint = rng.choice(ENDPOINTS)
                letters = await outbox.dead_letters(endpoint, 0, 100)
                some = [d.msg_id for d in letters if rng.random() < 0.5]
                await outbox.revive(endpoint, some or None)
                told[endpoint] = (await outbox.dead_count()).get(endpoint, 0)  # as replay does
                pending += await outbox.head(endpoint, 1000)
                pending = list({d.msg_id: d for d in pending}.values())
            _check(outbox, told)
    finally:
        await outbox.aclose()
