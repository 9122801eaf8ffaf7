"""The board's state as the demo server keeps it: the changes' rules, their bounds, and the
keeper that follows the channel, over a real hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clarion.client import connect
from clarion.core.hub import Hub
from clarion.demo import Demo, demo_settings
from clarion.demo.app import person_token
from clarion.demo.board import CHANNEL, MAX_TEXT, Board, keep
from clarion.standalone import make_server
from clarion.tasks import stop

from ..conftest import clarion_server, timeout


def changed(board: Board, *changes: Any, by: str = "alice") -> list[dict[str, Any]]:
    for n, change in enumerate(changes):
        board.apply(change, by, f"cursor-{n}")
    notes: list[dict[str, Any]] = board.snapshot()["notes"]
    return notes


def test_changes_are_applied_in_order_and_the_cursor_follows() -> None:
    board = Board()
    assert board.snapshot() == {"notes": [], "cursor": None} and not board.loaded.is_set()
    notes = changed(
        board,
        {"op": "add", "id": "a", "x": 0.1, "y": 0.2, "text": "first"},
        {"op": "add", "id": "b", "x": 0.3, "y": 0.4, "text": "second"},
        {"op": "move", "id": "a", "x": 0.5, "y": 0.6},
        {"op": "edit", "id": "b", "text": "changed"},
        {"op": "delete", "id": "a"},
    )
    assert notes == [{"id": "b", "x": 0.3, "y": 0.4, "text": "changed", "by": "alice"}]
    assert board.cursor == "cursor-4" and board.loaded.is_set()


def test_changes_are_idempotent() -> None:
    board = Board()
    add = {"op": "add", "id": "a", "x": 0.1, "y": 0.2, "text": "first"}
    notes = changed(
        board,
        add,
        {"op": "move", "id": "a", "x": 0.5, "y": 0.5},
        add,  # a known id is not added again, nor put back where it was
        {"op": "delete", "id": "a"},
        {"op": "delete", "id": "a"},
        {"op": "move", "id": "a", "x": 0.9, "y": 0.9},  # unknown: nothing to move
        {"op": "edit", "id": "a", "text": "gone"},
    )
    assert notes == []


def test_anything_malformed_is_ignored() -> None:
    board = Board()
    changed(board, {"op": "add", "id": "a", "x": 0.1, "y": 0.2, "text": "kept"})
    notes = changed(
        board,
        "add",
        ["op", "add"],
        {"op": "add", "id": "b", "x": "0.1", "y": 0.2},
        {"op": "add", "id": "c", "x": True, "y": 0.2},
        {"op": "add", "id": 5, "x": 0.1, "y": 0.2},
        {"op": "add", "id": "", "x": 0.1, "y": 0.2},
        {"op": "add", "id": "x" * 65, "x": 0.1, "y": 0.2},
        {"op": "move", "id": "a", "x": float("nan"), "y": 0.2},
        {"op": "edit", "id": "a", "text": 7},
        {"op": "wipe", "id": "a"},
    )
    assert notes == [{"id": "a", "x": 0.1, "y": 0.2, "text": "kept", "by": "alice"}]
    assert board.cursor == "cursor-9"  # applied, though it changed nothing


def test_the_board_is_bounded() -> None:
    board = Board(max_notes=2)
    notes = changed(
        board,
        {"op": "add", "id": "a", "x": -3, "y": 7, "text": "x" * (MAX_TEXT + 1)},
        {"op": "add", "id": "b", "x": 0.5, "y": 0.5},
        {"op": "add", "id": "c", "x": 0.5, "y": 0.5, "text": "refused: the board is full"},
        {"op": "edit", "id": "b", "text": "🙂" * (MAX_TEXT + 1)},
    )
    assert [(n["id"], n["x"], n["y"], len(n["text"])) for n in notes] == [
        ("a", 0.0, 1.0, MAX_TEXT),
        ("b", 0.5, 0.5, MAX_TEXT),
    ]
    changed(board, {"op": "delete", "id": "a"}, {"op": "add", "id": "c", "x": 0, "y": 0})
    assert [n["id"] for n in board.snapshot()["notes"]] == ["b", "c"]


@dataclass
class RunningDemo:
    hub: Hub
    url: str
    secret: str
    board: Board

    def keeper(self) -> asyncio.Task[None]:
        return asyncio.create_task(keep(self.url, self.secret, self.board))

    async def followed(self, cursor: str | None) -> None:
        """Until the keeper has applied the change at ``cursor``."""
        for _ in range(int(timeout(10) / 0.05)):
            if self.board.cursor == cursor:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_demo(tmp_path: Path) -> AsyncIterator[RunningDemo]:
    """The demo as `clarion demo` serves it, without devices, and a board of the test's own."""
    hub = Hub(demo_settings("127.0.0.1", 0, str(tmp_path)))
    server = make_server(hub, app=Demo(hub, devices=()), port=0)
    await server.start()
    secret = hub.settings.token_secret
    assert secret is not None
    try:
        yield RunningDemo(hub, f"http://127.0.0.1:{server.port}", secret, Board())
    finally:
        await server.shutdown(timeout=timeout(5))


@clarion_server("the demo as `clarion demo` serves it")
async def test_the_keeper_resumes_and_applies_what_history_holds_after_a_reset(
    tmp_path: Path,
) -> None:
    async with running_demo(tmp_path) as demo:
        hub, board = demo.hub, demo.board
        await hub.publish(CHANNEL, {"op": "add", "id": "a", "x": 0.1, "y": 0.1, "text": "a"})
        await hub.publish(CHANNEL, {"op": "add", "id": "b", "x": 0.2, "y": 0.2, "text": "b"})
        keeper = demo.keeper()
        await asyncio.wait_for(board.loaded.wait(), timeout(10))  # from history, at start
        assert [n.id for n in board.notes.values()] == ["a", "b"]
        await stop([keeper], timeout=timeout(5))

        # While it is away, more changes than history keeps: "a" moves, then "b" goes.
        for n in range(hub.options(CHANNEL).history_size):
            await hub.publish(CHANNEL, {"op": "move", "id": "a", "x": n / 2000, "y": 0.5})
        await hub.publish(CHANNEL, {"op": "delete", "id": "b"})
        last = await hub.publish(CHANNEL, {"op": "edit", "id": "a", "text": "moved"})
        keeper = demo.keeper()
        await demo.followed(hub.cursor_of(last))
        assert board.snapshot()["notes"] == [
            {"id": "a", "x": 0.4995, "y": 0.5, "text": "moved", "by": "?"}
        ]
        await stop([keeper], timeout=timeout(5))


@clarion_server("the demo as `clarion demo` serves it")
async def test_a_live_signal_changes_no_note(tmp_path: Path) -> None:
    """Any page may publish on the board's channel, ephemeral publications included: they are
    in no history, so a page resuming from a cursor never sees them, and the snapshot must not
    hold them either."""
    async with running_demo(tmp_path) as demo:
        hub, board = demo.hub, demo.board
        await hub.publish(CHANNEL, {"op": "add", "id": "a", "x": 0.1, "y": 0.1, "text": "a"})
        keeper = demo.keeper()
        await asyncio.wait_for(board.loaded.wait(), timeout(10))
        async with connect(demo.url, token=person_token(hub.settings, "mallory")) as client:
            for change in (
                {"op": "delete", "id": "a"},
                {"op": "add", "id": "ghost", "x": 0.5, "y": 0.5, "text": "in no history"},
            ):
                await client.publish(CHANNEL, change, ephemeral=True)
            last = await client.publish(CHANNEL, {"op": "edit", "id": "a", "text": "kept"})
        await demo.followed(last.cursor)
        assert board.snapshot()["notes"] == [
            {"id": "a", "x": 0.1, "y": 0.1, "text": "kept", "by": "?"}
        ]
        await stop([keeper], timeout=timeout(5))
