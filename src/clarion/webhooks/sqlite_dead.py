"""The SQLite outbox's dead letters within ``max_dead_letters`` and ``max_dead_letter_bytes``.

Each endpoint keeps its newest dead letters up to the count, and of those the newest whose
payloads fit the bytes (the newest one whatever its size). The bytes each endpoint's dead
letters hold are kept in memory once read, so that a write that stays within them costs no walk
over the table; a blob's length comes from its row's header, so neither the walk nor the trims
read the payloads themselves.
"""

from __future__ import annotations

import sqlite3


class DeadLetterBounds:
    """Used on the outbox's writer thread, inside its transactions."""

    def __init__(self, keep: int, keep_bytes: int) -> None:
        self.keep = keep
        self.keep_bytes = keep_bytes
        # Bytes of each endpoint's dead letters, as committed; an endpoint missing is read at
        # its next trim.
        self.held: dict[str, int] = {}

    def forget(self, endpoint_id: str | None = None) -> None:
        """Read again at the next trim: dead letters went another way (revived, the endpoint
        deleted), or, with no endpoint, a transaction was rolled back."""
        if endpoint_id is None:
            self.held.clear()
        else:
            self.held.pop(endpoint_id, None)

    def trim(self, db: sqlite3.Connection, endpoint_id: str, added: int) -> int:
        """``added`` bytes of dead letters were just written for ``endpoint_id``: keep within the
        bounds; returns how many it holds now."""
        held = self.held.get(endpoint_id)
        if held is None:
            (row,) = db.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM dead_letters WHERE endpoint = ?",
                (endpoint_id,),
            )
            held = int(row[0])
        else:
            held += added
        cut = db.execute(
            "SELECT seq FROM dead_letters WHERE endpoint = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (endpoint_id, self.keep),
        ).fetchone()
        if cut is not None:
            held -= _drop(db, endpoint_id, cut[0])
        if held > self.keep_bytes:
            cut = db.execute(
                "SELECT seq FROM (SELECT seq, row_number() OVER w AS n, "
                "sum(length(body)) OVER w AS held FROM dead_letters WHERE endpoint = ?1 "
                "WINDOW w AS (ORDER BY seq DESC)) WHERE held > ?2 AND n > 1 "
                "ORDER BY seq DESC LIMIT 1",
                (endpoint_id, self.keep_bytes),
            ).fetchone()
            if cut is not None:
                held -= _drop(db, endpoint_id, cut[0])
        self.held[endpoint_id] = held
        (kept,) = db.execute(
            "SELECT count(*) FROM dead_letters WHERE endpoint = ?", (endpoint_id,)
        ).fetchone()
        return int(kept)


def _drop(db: sqlite3.Connection, endpoint_id: str, through: int) -> int:
    """Delete an endpoint's dead letters up to seq ``through``: the bytes they held."""
    where = "FROM dead_letters WHERE endpoint = ? AND seq <= ?"
    (gone,) = db.execute(f"SELECT coalesce(sum(length(body)), 0) {where}", (endpoint_id, through))
    db.execute(f"DELETE {where}", (endpoint_id, through))
    return int(gone[0])
