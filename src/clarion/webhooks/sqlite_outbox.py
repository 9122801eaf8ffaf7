"""The memory engine's webhook outbox: endpoints, pending deliveries, dead letters, positions.

:class:`SQLiteOutbox` keeps them in one SQLite file under ``data_dir`` in WAL mode.

Every statement runs on one thread of the outbox's own, in the order the calls were made, so
the event loop never waits for SQLite or the disk. What the hub's listeners enqueue while a
commit is under way is committed next, in one transaction (a group commit): under load, one
commit carries the deliveries of many publications, and each publish call waits only for the
commit that holds its own. With ``fsync = true`` every commit also waits for the disk, which
protects against power loss.

The file gives disk back as deliveries leave (``sqlite_space``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from clarion.errors import ConfigError
from clarion.webhooks.endpoint import Delivery, Endpoint
from clarion.webhooks.sqlite_dead import DeadLetterBounds
from clarion.webhooks.sqlite_schema import (
    DELIVERY_COLUMNS,
    SCHEMA,
    delivery_of,
    delivery_values,
)
from clarion.webhooks.sqlite_space import WAL_LIMIT, Reclaimer, open_incremental

_T = TypeVar("_T")
# Deliveries handed to enqueue, the event version they carry, and who waits for them.
_Pending = tuple[list[Delivery], int | None, "asyncio.Future[list[Delivery]]"]
# A commit's outcome: what each batch stored, and the dead letters held by each endpoint given
# more.
_Committed = tuple[list[list[Delivery]], dict[str, int]]


class SQLiteOutbox:
    """The outbox of the memory engine: one SQLite file under ``data_dir``.

    A lock file next to it makes sure only one hub uses a ``data_dir`` at a time: two writers
    would deliver everything twice.
    """

    FILE = "webhooks.sqlite3"
    shared = False
    poll_interval: float | None = None

    def __init__(
        self,
        data_dir: str | Path,
        *,
        fsync: bool = False,
        max_dead_letters: int = 10_000,
        max_dead_letter_bytes: int = 1 << 28,
    ) -> None:
        self.path = Path(data_dir) / self.FILE
        self._fsync = fsync
        self._dead = DeadLetterBounds(max_dead_letters, max_dead_letter_bytes)
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        # The connection is used on this one thread only, in the order calls are made.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="clarion-webhook-outbox")
        self._pending: list[_Pending] = []  # enqueued, for the next commit
        self._scheduled = False
        self._writing: asyncio.Future[_Committed] | None = None
        self.on_written: Callable[[set[str]], None] | None = None
        self.on_registry_changed: Callable[[], None] | None = None  # one node: never called
        self.on_dead_counted: Callable[[str, int], None] | None = None
        self._space = Reclaimer(self._call, lambda: self._db)

    def in_use(self) -> bool:
        return self.path.exists()

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data_dir {self.path.parent}: {exc}") from None
        self._lock = _lock_file(self.path.with_suffix(".lock"))
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            open_incremental(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            db.execute("PRAGMA busy_timeout=1000")
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._close()
            raise ConfigError(f"cannot open the webhook outbox {self.path}: {exc}") from None
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Close once the calls under way are done (deliveries not yet committed are lost)."""
        self._thread.shutdown(wait=True)
        self._close()

    async def aclose(self) -> None:
        await self.flush()
        await self._space.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def claim(self, endpoint_id: str) -> bool:
        return True  # one hub per data_dir: it delivers everything

    async def release(self, endpoint_id: str) -> None:
        return None

    async def registry_version(self) -> int:
        return 0  # endpoints change only through this hub

    async def flush(self) -> None:
        while self._pending or self._writing is not None:
            if self._writing is None:
                self._write_pending()
            writing = self._writing
            if writing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(writing)
                await asyncio.sleep(0)  # let its done callback run

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the webhook outbox is not open")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            self._dead.forget()
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ---- deliveries ------------------------------------------------------------------------

    def enqueue(
        self, deliveries: list[Delivery], event_version: int | None = None
    ) -> asyncio.Future[list[Delivery]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Delivery]] = loop.create_future()
        self._pending.append((deliveries, event_version, done))
        if not self._scheduled and self._writing is None:
            # At the end of this loop iteration: what else is enqueued meanwhile joins in.
            self._scheduled = True
            loop.call_soon(self._write_pending)
        return done

    def _write_pending(self) -> None:
        self._scheduled = False
        if self._writing is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        job = asyncio.get_running_loop().run_in_executor(
            self._thread, self._commit, [(d, v) for d, v, _ in batch]
        )
        self._writing = job
        job.add_done_callback(lambda j: self._written(batch, j))

    def _written(self, batch: list[_Pending], job: asyncio.Future[_Committed]) -> None:
        self._writing = None
        failure = job.exception() if not job.cancelled() else asyncio.CancelledError()
        for i, (_, _, done) in enumerate(batch):
            if done.done():
                continue
            if failure is not None:
                done.set_exception(failure)
            else:
                done.set_result(job.result()[0][i])
        if failure is None:
            self._dead_counted(job.result()[1])
        # What was enqueued while this commit ran goes in the next one, together.
        self._write_pending()

    def _commit(self, batches: list[tuple[list[Delivery], int | None]]) -> _Committed:
        """One transaction for every batch enqueued since the last commit (writer thread): what
        each batch stored, and the dead letters now held by the endpoints given more."""
        out: list[list[Delivery]] = []
        buried: dict[str, int] = {}  # endpoint -> bytes of the dead letters written for it
        version = None
        with self._transaction() as db:
            for deliveries, event_version in batches:
                stored: list[Delivery] = []
                for d in deliveries:
                    if d.dead_at is None:
                        cursor = db.execute(
                            "INSERT OR IGNORE INTO outbox (endpoint, msg_id, kind, channel, "
                            'epoch, "offset", body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                            delivery_values(d),
                        )
                        if cursor.rowcount == 1:
                            d.seq = cursor.lastrowid or 0
                            stored.append(d)
                    else:
                        db.execute(
                            "INSERT INTO dead_letters (endpoint, msg_id, kind, channel, epoch, "
                            '"offset", body, created_at, attempts, last_error, dead_at) '
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (*delivery_values(d), d.attempts, d.last_error, d.dead_at),
                        )
                        buried[d.endpoint] = buried.get(d.endpoint, 0) + len(d.body)
                        stored.append(d)
                out.append(stored)
                if event_version is not None:
                    version = max(version or 0, event_version)
            dead = {e: self._dead.trim(db, e, added) for e, added in buried.items()}
            if version is not None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('event_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                    (version,),
                )
        return out, dead

    def _dead_counted(self, dead: dict[str, int]) -> None:
        if self.on_dead_counted is not None:
            for endpoint_id, held in dead.items():
                self.on_dead_counted(endpoint_id, held)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on the writer thread, after everything submitted before it. Once submitted
        it runs to the end even if the caller is cancelled (a worker stopped just after its
        receiver answered still records the delivery), and close() waits for it."""
        job = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        return await asyncio.shield(job)

    async def head(self, endpoint_id: str, limit: int) -> list[Delivery]:
        return await self._call(self._head, endpoint_id, limit)

    async def delivered(self, delivery: Delivery, endpoint: Endpoint) -> None:
        await self._call(self._delivered, delivery, endpoint)
        self._space.soon()

    async def failed(self, delivery: Delivery, endpoint: Endpoint) -> None:
        await self._call(self._failed, delivery, endpoint)

    async def bury(self, delivery: Delivery) -> None:
        held = await self._call(self._bury, delivery)
        self._dead_counted({delivery.endpoint: held})
        self._space.soon()

    async def backlog(self) -> dict[str, int]:
        return await self._call(self._backlog)

    async def backlog_bytes(self) -> dict[str, int]:
        return await self._call(self._backlog_bytes)

    async def dead_count(self) -> dict[str, int]:
        return await self._call(self._dead_count)

    async def dead_letters(self, endpoint_id: str, after_seq: int, limit: int) -> list[Delivery]:
        return await self._call(self._dead_letters, endpoint_id, after_seq, limit)

    async def revive(self, endpoint_id: str, ids: list[str] | None) -> tuple[int, int]:
        revived = await self._call(self._revive, endpoint_id, ids)
        self._space.soon()
        return revived

    async def positions(self, endpoint_id: str, limit: int) -> list[tuple[str, str, int]]:
        return await self._call(self._positions, endpoint_id, limit)

    async def event_version(self) -> int:
        return await self._call(self._event_version)

    async def load_endpoints(self) -> list[Endpoint]:
        return await self._call(self._load_endpoints)

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        await self._call(self._save_endpoint, endpoint)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._call(self._delete_endpoint, endpoint_id)
        self._space.soon()

    def _head(self, endpoint_id: str, limit: int) -> list[Delivery]:
        rows = self.db.execute(
            f"SELECT {DELIVERY_COLUMNS}, first_failure, next_attempt FROM outbox "
            "WHERE endpoint = ? ORDER BY seq LIMIT ?",
            (endpoint_id, limit),
        ).fetchall()
        out = []
        for row in rows:
            d = delivery_of(row)
            d.first_failure, d.next_attempt = row[11], row[12]
            out.append(d)
        return out

    def _delivered(self, delivery: Delivery, endpoint: Endpoint) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (delivery.seq,))
            if delivery.channel is not None and delivery.offset is not None:
                db.execute(
                    'INSERT INTO positions (endpoint, channel, epoch, "offset", delivered_at) '
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint, channel) DO UPDATE SET "
                    'epoch = excluded.epoch, "offset" = excluded."offset", '
                    "delivered_at = excluded.delivered_at",
                    (endpoint.id, delivery.channel, delivery.epoch, delivery.offset, now),
                )
            db.execute(
                "UPDATE endpoints SET last_msg_id = ?, last_delivered_at = ? WHERE id = ?",
                (endpoint.last_msg_id, endpoint.last_delivered_at, endpoint.id),
            )

    def _failed(self, delivery: Delivery, endpoint: Endpoint) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = ?, first_failure = ?, next_attempt = ?, "
                "last_error = ? WHERE seq = ?",
                (
                    delivery.attempts,
                    delivery.first_failure,
                    delivery.next_attempt,
                    delivery.last_error,
                    delivery.seq,
                ),
            )
            db.execute(
                "UPDATE endpoints SET last_error = ?, last_error_at = ? WHERE id = ?",
                (endpoint.last_error, endpoint.last_error_at, endpoint.id),
            )

    def _bury(self, delivery: Delivery) -> int:
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (delivery.seq,))
            db.execute(
                "INSERT INTO dead_letters (endpoint, msg_id, kind, channel, epoch, "
                '"offset", body, created_at, attempts, last_error, dead_at) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *delivery_values(delivery),
                    delivery.attempts,
                    delivery.last_error,
                    delivery.dead_at,
                ),
            )
            return self._dead.trim(db, delivery.endpoint, len(delivery.body))

    def _backlog(self) -> dict[str, int]:
        rows = self.db.execute("SELECT endpoint, count(*) FROM outbox GROUP BY endpoint")
        return {endpoint: count for endpoint, count in rows}

    def _backlog_bytes(self) -> dict[str, int]:
        rows = self.db.execute("SELECT endpoint, sum(length(body)) FROM outbox GROUP BY endpoint")
        return {endpoint: held for endpoint, held in rows}

    def _dead_count(self) -> dict[str, int]:
        rows = self.db.execute("SELECT endpoint, count(*) FROM dead_letters GROUP BY endpoint")
        return {endpoint: count for endpoint, count in rows}

    def _dead_letters(self, endpoint_id: str, after_seq: int, limit: int) -> list[Delivery]:
        rows = self.db.execute(
            f"SELECT {DELIVERY_COLUMNS}, dead_at FROM dead_letters "
            "WHERE endpoint = ? AND seq > ? ORDER BY seq LIMIT ?",
            (endpoint_id, after_seq, limit),
        ).fetchall()
        out = []
        for row in rows:
            d = delivery_of(row)
            d.dead_at = row[11]
            out.append(d)
        return out

    def _revive(self, endpoint_id: str, ids: list[str] | None) -> tuple[int, int]:
        where = "endpoint = ?"
        params: list[Any] = [endpoint_id]
        if ids is not None:
            where += f" AND msg_id IN ({', '.join('?' * len(ids))})"
            params += ids
        with self._transaction() as db:
            # In dead-letter order; a message id still pending stays where it is.
            before = db.total_changes
            (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
            db.execute(
                "INSERT OR IGNORE INTO outbox (endpoint, msg_id, kind, channel, epoch, "
                '"offset", body, created_at) SELECT endpoint, msg_id, kind, channel, epoch, '
                f'"offset", body, created_at FROM dead_letters WHERE {where} ORDER BY seq',
                params,
            )
            revived = db.total_changes - before
            (size,) = db.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM outbox WHERE seq > ?", (last,)
            ).fetchone()
            db.execute(f"DELETE FROM dead_letters WHERE {where}", params)
            self._dead.forget(endpoint_id)
        return revived, int(size)

    def _positions(self, endpoint_id: str, limit: int) -> list[tuple[str, str, int]]:
        rows = self.db.execute(
            'SELECT channel, epoch, "offset" FROM positions WHERE endpoint = ? '
            "ORDER BY delivered_at DESC LIMIT ?",
            (endpoint_id, limit),
        )
        return [(channel, epoch, offset) for channel, epoch, offset in rows]

    def _event_version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'event_version'").fetchone()
        return int(row[0]) if row else 0

    # ---- endpoints -------------------------------------------------------------------------

    def _load_endpoints(self) -> list[Endpoint]:
        rows = self.db.execute(
            "SELECT id, url, channels, events, secret, source, created_at, disabled_reason, "
            "last_error, last_error_at, last_msg_id, last_delivered_at FROM endpoints "
            "ORDER BY created_at, id"
        )
        return [
            Endpoint(
                id=row[0],
                url=row[1],
                channels=tuple(orjson.loads(row[2])),
                events=tuple(orjson.loads(row[3])),
                secret=row[4],
                source=row[5],
                created_at=row[6],
                disabled_reason=row[7],
                last_error=row[8],
                last_error_at=row[9],
                last_msg_id=row[10],
                last_delivered_at=row[11],
            )
            for row in rows
        ]

    def _save_endpoint(self, endpoint: Endpoint) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO endpoints (id, url, channels, events, secret, source, created_at, "
                "disabled_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "url = excluded.url, channels = excluded.channels, events = excluded.events, "
                "secret = excluded.secret, source = excluded.source, "
                "disabled_reason = excluded.disabled_reason",
                (
                    endpoint.id,
                    endpoint.url,
                    orjson.dumps(list(endpoint.channels)).decode(),
                    orjson.dumps(list(endpoint.events)).decode(),
                    endpoint.secret,
                    endpoint.source,
                    endpoint.created_at,
                    endpoint.disabled_reason,
                ),
            )

    def _delete_endpoint(self, endpoint_id: str) -> None:
        with self._transaction() as db:
            self._dead.forget(endpoint_id)
            for table in ("endpoints", "outbox", "dead_letters", "positions"):
                column = "id" if table == "endpoints" else "endpoint"
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (endpoint_id,))


def _lock_file(path: Path) -> IO[bytes]:
    handle = open(path, "ab")  # noqa: SIM115 - held open for the outbox's lifetime
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"{path.parent} is in use by another clarion hub (its webhook outbox); give each "
            "hub its own data_dir (CLARION_DATA_DIR, or data_dir in clarion.toml or Settings): "
            "two hubs started in one directory share the default ./clarion-data. Worker "
            "processes of one server (uvicorn --workers, gunicorn -w) are not separate hubs: "
            "with the memory engine run one process, or give them the Redis engine, whose "
            "nodes share one outbox in Redis"
        ) from None
    return handle
