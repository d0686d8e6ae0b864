"""A byte relay between two connected transports, both ways, with backpressure and half-close.

Used for TCP, for WebSocket after `101 Switching Protocols`, and (its water marks) for streamed bodies.
Backpressure: each transport's write buffer has a high and a low water mark. When the bytes waiting to go
out to one side pass the high mark, asyncio calls that side's `pause_writing`, and the relay stops
reading from the other side; below the low mark it reads again. So a fast sender and a slow receiver cost
at most the high mark plus one read per direction, however many bytes pass.
Half-close: an EOF from one side is passed on as an EOF (`write_eof`) where the transport can write one
(plain TCP), and the other direction goes on; TLS transports cannot send a lone EOF in asyncio, so the
other side is closed once its buffer is flushed. The relay is done when both transports are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class _Side(asyncio.Protocol):
    """The protocol of one transport in a relay: what it reads goes to the peer's transport."""

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        self.relay = relay
        self.transport = transport
        self.peer: _Side
        self.eof = False
        self.closed = False
        self.paused = False  # our reading is paused because the peer's buffer is full
        self.received = 0  # bytes read from this side (and written to the other)

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport
        if peer.is_closing():
            return
        peer.write(data)
        self.received += len(data)
        self.relay.bytes += len(data)
        size = peer.get_write_buffer_size()
        if size > self.relay.peak_buffered:
            self.relay.peak_buffered = size

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if self.peer.eof:  # both directions are done
            peer.close()
            return False
        if peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
            return True  # keep our side open: the other direction may still be flowing
        peer.close()  # flushes what is buffered, then closes
        return False

    def pause_writing(self) -> None:
        # Our transport's buffer is full: stop reading from the peer until it drains.
        self.relay.pauses += 1
        self.peer.paused = True
        if not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.paused = False
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer.transport
        if exc is not None:
            peer.abort()  # a reset is passed on as a reset
        elif not peer.is_closing():
            peer.close()
        self.relay._side_closed()


class Relay:
    """Bytes both ways between `a` and `b`, which it takes over (their protocols are replaced).

    `to_a` and `to_b` are bytes already read from the other side that must go first (e.g. what followed
    the head of a 101). `on_done` is called once, when both transports are closed."""

    def __init__(self, a: asyncio.Transport, b: asyncio.Transport, *, to_a: bytes = b"", to_b: bytes = b"",
                 high_water: int = HIGH_WATER, low_water: int = LOW_WATER,
                 on_done: Callable[[], None] | None = None) -> None:
        self.bytes = 0
        self.pauses = 0  # how many times a side's buffer passed the high mark
        self.peak_buffered = 0  # the largest write buffer seen right after a write
        self.done = False
        self._on_done = on_done
        self.a, self.b = _Side(self, a), _Side(self, b)
        self.a.peer, self.b.peer = self.b, self.a
        for side in (self.a, self.b):
            side.transport.set_write_buffer_limits(high_water, low_water)
            side.transport.set_protocol(side)
        if to_a:
            self.b.data_received(to_a)
        if to_b:
            self.a.data_received(to_b)
        for side in (self.a, self.b):  # whoever handed them over may have paused them
            if not side.transport.is_closing():
                side.transport.resume_reading()

    def close(self) -> None:
        for side in (self.a, self.b):
            side.transport.close()

    def _side_closed(self) -> None:
        if self.a.closed and self.b.closed and not self.done:
            self.done = True
            if self._on_done is not None:
                self._on_done()
