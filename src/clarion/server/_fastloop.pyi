# The compiled loops of clarion.server.fastws (see _fastloop.c); absent when not built.
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

VERSION: int

def bind(
    outbox: type,
    flusher: type,
    flush_one: Callable[[Any], None],
    push_many: Callable[[Iterable[Any], bytes], None],
    report: Callable[[Any, BaseException], None],
    /,
) -> None: ...
def push_many(boxes: Iterable[Any], frame: bytes, /) -> None: ...
def flush_boxes(dirty: list[Any], /) -> None: ...
def whole_direct(
    data: bytes,
    routes: dict[bytes, Any],
    max_headers: int,
    max_head_bytes: int,
    max_body: int,
    /,
) -> tuple[Any, list[tuple[bytes, bytes]], int, int] | None: ...
def step(coro: Coroutine[Any, Any, Any], /) -> tuple[bool, Any]: ...
def use_ring(enabled: bool, /) -> str: ...
