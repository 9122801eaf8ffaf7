"""A fault-injecting TCP proxy on loopback, for chaos tests.

Placed between clients and a hub, or between a hub and Redis, it forwards bytes both ways and
injects, on demand: added ``latency`` per chunk, a ``close_delay`` (one side's end reaches the
other that much later: a hub that lets go of a cut connection late), ``split_head`` (an HTTP
answer's head forwarded alone, the bytes that came with it that much later: a stream's first
event well after its answer), a ``stall`` (nothing forwarded, nothing read: to each side the
other went silent, as with a half-open connection), a ``freeze`` of the connections open now
(they go silent for good while new ones pass: a NAT that forgot them, a laptop woken on another
network), a ``reset`` of every connection (RST to both sides), and ``refuse`` (new connections
reset at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0  # seconds added to every chunk, each way
        self.close_delay = 0.0  # seconds before one side's end reaches the other
        self.split_head = 0.0  # seconds between an answer's head and the bytes after it
        self.refuse = False
        self.port = 0
        self.accepted = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._frozen: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def stall(self) -> None:
        """Forward nothing until :meth:`resume`; bytes in flight wait in the kernel's buffers."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def freeze(self) -> int:
        """The connections open now forward nothing more and are never closed; new ones flow.
        Returns how many were frozen."""
        self._frozen |= self._pairs
        return len(self._pairs)

    def reset(self) -> int:
        """Reset every connection (RST both ways, no FIN); returns how many there were."""
        pairs = list(self._pairs)
        for pair in pairs:
            for writer in pair:
                _abort(writer)
        self._pairs.clear()
        return len(pairs)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.resume()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst, answers in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.ensure_future(self._pump(src, dst, pair, answers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        answers: bool,
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                chunk = await src.read(65536)
                if pair in self._frozen:
                    await asyncio.Event().wait()  # for good, even a close: cancelled by close()
                if not chunk:
                    if self.close_delay:
                        await asyncio.sleep(self.close_delay)
                    break
                if self.latency:
                    await asyncio.sleep(self.latency)
                await self._flowing.wait()
                if pair in self._frozen:
                    await asyncio.Event().wait()
                if pair not in self._pairs:
                    return  # reset meanwhile
                end = chunk.find(b"\r\n\r\n") + 4  # 3: no whole head in the chunk
                if (
                    answers
                    and self.split_head
                    and chunk.startswith(b"HTTP/")
                    and 3 < end < len(chunk)
                ):
                    dst.write(chunk[:end])
                    await dst.drain()
                    await asyncio.sleep(self.split_head)
                    if pair not in self._pairs:
                        return
                    chunk = chunk[end:]
                dst.write(chunk)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        # One side ended (FIN or error): end the other side too, cleanly.
        if pair in self._pairs:
            self._pairs.discard(pair)
            for writer in pair:
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
