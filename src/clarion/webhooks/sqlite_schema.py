"""What the SQLite outbox stores: its tables, and a delivery as a row."""

from __future__ import annotations

from typing import Any

from clarion.webhooks.endpoint import Delivery

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    channels TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    disabled_reason TEXT,
    last_error TEXT,
    last_error_at INTEGER,
    last_msg_id TEXT,
    last_delivered_at INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT,
    epoch TEXT,
    "offset" INTEGER,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failure REAL,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (endpoint, msg_id)
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (endpoint, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT,
    epoch TEXT,
    "offset" INTEGER,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_order ON dead_letters (endpoint, seq);
CREATE TABLE IF NOT EXISTS positions (
    endpoint TEXT NOT NULL,
    channel TEXT NOT NULL,
    epoch TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (endpoint, channel)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

DELIVERY_COLUMNS = (
    'seq, endpoint, msg_id, kind, channel, epoch, "offset", body, created_at, attempts, last_error'
)


def delivery_values(d: Delivery) -> tuple[Any, ...]:
    return (d.endpoint, d.msg_id, d.kind, d.channel, d.epoch, d.offset, d.body, d.created_at)


def delivery_of(row: tuple[Any, ...]) -> Delivery:
    return Delivery(
        seq=row[0],
        endpoint=row[1],
        msg_id=row[2],
        kind=row[3],
        channel=row[4],
        epoch=row[5],
        offset=row[6],
        body=bytes(row[7]),
        created_at=row[8],
        attempts=row[9],
        last_error=row[10],
    )
