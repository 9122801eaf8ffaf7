"""The board's state, kept by the demo server: the application holds the notes, the channel
carries their changes.

Pages publish their changes (``add``, ``move``, ``edit``, ``delete``) on ``board:main``; the
keeper follows that channel as a client of the hub, applies each change to :class:`Board`, and
remembers the cursor of the last one applied. A visitor starts from the snapshot (``GET
/demo/board.json``: the notes and that cursor) and subscribes from the cursor, so however many
changes the channel's history has let go, the board is whole. ``board.js`` applies the same
rules, so a page and the keeper agree on every change after the snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from clarion.core.auth import mint_token

if TYPE_CHECKING:
    from clarion.client import Client, Reset

log = logging.getLogger("clarion.demo")

CHANNEL = "board:main"
KEEPER = "demo:board"  # its user: no person's name can spell it (see app.NAME)
# Bounds, the same in board.js: a board of MAX_NOTES refuses new notes (the oldest is
# someone's work, which nobody asked to remove); longer texts are cut.
MAX_NOTES = 200
MAX_TEXT = 500  # characters (code points)
MAX_ID = 64


@dataclass(slots=True)
class Note:
    id: str
    x: float  # 0..1 of the board's width
    y: float
    text: str
    by: str  # the user who added it


def _coordinate(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return min(1.0, max(0.0, value)) if math.isfinite(value) else None


class Board:
    """The notes as the changes applied so far leave them, and the cursor after the last
    change. Changes are idempotent (a known id is not added twice, an unknown one is neither
    moved, edited nor deleted), and anything malformed is ignored: any page may publish."""

    def __init__(self, max_notes: int = MAX_NOTES) -> None:
        self.max_notes = max_notes
        self.notes: dict[str, Note] = {}  # in the order added: the oldest drawn first
        self.cursor: str | None = None
        self.loaded = asyncio.Event()  # set once the cursor is known: the snapshot can be read

    def apply(self, change: Any, by: str, cursor: str) -> None:
        self.change(change, by)
        self.advance(cursor)

    def advance(self, cursor: str) -> None:
        self.cursor = cursor
        self.loaded.set()

    def change(self, change: Any, by: str) -> None:
        if not isinstance(change, dict):
            return
        op, id = change.get("op"), change.get("id")
        if not isinstance(id, str) or not 0 < len(id) <= MAX_ID:
            return
        note = self.notes.get(id)
        x, y = _coordinate(change.get("x")), _coordinate(change.get("y"))
        text = change.get("text")
        text = text[:MAX_TEXT] if isinstance(text, str) else None
        if op == "add" and note is None and x is not None and y is not None:
            if len(self.notes) < self.max_notes:
                self.notes[id] = Note(id, x, y, text or "", by)
        elif op == "move" and note is not None and x is not None and y is not None:
            note.x, note.y = x, y
        elif op == "edit" and note is not None and text is not None:
            note.text = text
        elif op == "delete" and note is not None:
            del self.notes[id]

    def snapshot(self) -> dict[str, Any]:
        """The notes and the cursor they are at, read together: no await between them."""
        return {"notes": [asdict(note) for note in self.notes.values()], "cursor": self.cursor}


def _user(info: dict[str, Any] | None) -> str:
    user = (info or {}).get("user")
    return user if isinstance(user, str) else "?"


async def keep(url: str, secret: str, board: Board) -> None:
    """Follow ``board:main`` over WebSocket with a token of the keeper's own and apply every
    change to ``board``. The client resumes from its cursor after a drop; if the hub has let go
    of changes it missed meanwhile (a reset), the keeper applies what history still holds."""
    from clarion.client import Reset, connect

    def token() -> str:
        return mint_token(secret, KEEPER, [CHANNEL], ttl=3600, info={"name": "board keeper"})

    while True:
        try:
            async with connect(url, token=token, transport="ws") as client:
                if board.cursor is None:
                    await replay(client, board)  # a first start: what the channel holds
                async with client.subscribe(CHANNEL, since=board.cursor) as sub:
                    async for item in sub:
                        if isinstance(item, Reset):
                            log.warning("demo board: %s changes lost (%s)", CHANNEL, item.reason)
                            await replay(client, board, until=item)
                        elif not item.ephemeral:
                            # A live signal is in no history: a page resuming from a cursor
                            # would never see it, so the board is not changed by one.
                            board.apply(item.data, _user(item.info), item.cursor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the hub is going away or busy: come back later
            log.warning("demo board keeper: %s", exc)
        await asyncio.sleep(2.0)


async def replay(client: Client, board: Board, until: Reset | None = None) -> None:
    """Apply the channel's history, oldest first, up to where ``until`` continues (a reset's
    cursor, where the subscription goes on), and move the cursor there. After a reset, notes
    that the lost changes touched may be stale: no better can be had once history let them go."""
    stop = until.position if until is not None else None
    end = until.cursor if until is not None else None
    since: str | None = None
    done = False
    while not done:
        page = await client.history(CHANNEL, since=since)
        for message in page.publications:
            if stop is not None and message.offset > stop.offset:
                done = True  # the subscription delivers it, and those after it
                break
            board.apply(message.data, _user(message.info), message.cursor)
        since = page.cursor
        done = done or not page.more
    board.advance(end if end is not None else page.cursor)
