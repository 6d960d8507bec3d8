"""Trio streams and listeners over the user-level stack.

``TCPStream`` is a :class:`trio.abc.HalfCloseableStream` and ``TCPListener`` a
:class:`trio.abc.Listener`, so code written for trio's own TCP (``trio.serve_listeners``, stream
helpers) runs on this stack unchanged. ``stream.info()`` returns the connection's
:class:`~tcpstack.tcp.info.TCPInfo` as of the call, synchronously.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from tcpstack.links.base import Link
from tcpstack.stack import DEFAULT_EPHEMERAL_PORTS, StackCore, _Listen, running
from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.events import Event
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import TcpState

__all__ = ["Stack", "TCPStream", "TCPListener", "open_stack"]

DEFAULT_RECEIVE_SIZE = 65536
EVENT_BUFFER = 1024

_SYNCHRONIZED_OR_LATER = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSE_WAIT,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
        TcpState.TIME_WAIT,
    }
)


class TCPStream(trio.abc.HalfCloseableStream):
    """One TCP connection of a :class:`~tcpstack.stack.Stack`, as a trio stream."""

    def __init__(self, stack: StackCore, conn: Connection) -> None:
        self.stack = stack
        self.conn = conn
        self._send_guard = trio.lowlevel.ParkingLot()  # not a lock: detects concurrent senders
        self._sending = False
        self._receiving = False
        self._closed = False
        self._events: collections.deque[Event] = collections.deque(maxlen=EVENT_BUFFER)
        self.events_dropped = 0

    # -------------------------------------------------------------- introspection
    @property
    def local(self) -> tuple[str, int]:
        return self.conn.local

    @property
    def remote(self) -> tuple[str, int]:
        return self.conn.remote

    def info(self) -> TCPInfo:
        """The connection's TCP state, current to this instant."""
        return self.conn.info(trio.current_time())

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events as they happen; at most ``EVENT_BUFFER`` are held between reads
        (older ones are dropped and counted in ``events_dropped``)."""
        while True:
            self._collect_events()
            while self._events:
                yield self._events.popleft()
            if self.conn.state is TcpState.CLOSED:
                return
            await self.stack.wait_changed(self.conn)

    def _collect_events(self) -> None:
        for ev in self.conn.drain_events():
            if len(self._events) == self._events.maxlen:
                self.events_dropped += 1
            self._events.append(ev)

    def _check_error(self) -> None:
        error = self.conn.error
        if error:
            raise trio.BrokenResourceError(str(error))

    async def _wait(self) -> None:
        self._collect_events()
        await self.stack.wait_changed(self.conn)

    # -------------------------------------------------------------- trio.abc.Stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            while view:
                self._check_error()
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed while sending")
                accepted = self.conn.send(view)
                if accepted:
                    view = view[accepted:]
                    self.stack.touch(self.conn)
                if view:
                    await self._wait()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        while self.conn.send_space == 0 and not self.conn.error:
            await self._wait()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                data = self.conn.receive(max_bytes)
                if data:
                    self.stack.touch(self.conn)  # the window may open: let a window update out
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if self.conn.at_eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                self._check_error()
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed while receiving")
                await self._wait()
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await trio.lowlevel.checkpoint()
        self.conn.shutdown_write()
        self.stack.touch(self.conn)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()
            self.stack.touch(self.conn)
        await trio.lowlevel.checkpoint()


class TCPListener(trio.abc.Listener[TCPStream]):
    """A listening port of a :class:`~tcpstack.stack.Stack`."""

    def __init__(self, stack: StackCore, listen: _Listen) -> None:
        self.stack = stack
        self._listen = listen

    @property
    def port(self) -> int:
        return self._listen.port

    async def accept(self) -> TCPStream:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._listen.closed:
                raise trio.ClosedResourceError("the listener is closed")
            if self._listen.accept_queue:
                conn = self._listen.accept_queue.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return TCPStream(self.stack, conn)
            await self.stack.wait_accept(self._listen)

    async def aclose(self) -> None:
        if not self._listen.closed:
            self.stack.unlisten(self._listen)
        await trio.lowlevel.checkpoint()


class Stack(StackCore):
    """A user-level TCP/IP stack: open streams and listeners, inspect every connection."""

    async def open_tcp_stream(self, host: str, port: int, **options: Any) -> TCPStream:
        """Connect to ``host:port``; return once ESTABLISHED, or raise ``OSError`` with the reason.

        ``options`` override the stack's :class:`~tcpstack.tcp.config.ConnectionOptions`.
        """
        conn = self.connect(host, port, self._merge(options))
        try:
            while conn.state not in _SYNCHRONIZED_OR_LATER:
                if conn.error or conn.state is TcpState.CLOSED:
                    raise OSError(f"connect to {host}:{port} failed: {conn.error or 'closed'}")
                await self.wait_changed(conn)
        except BaseException:
            if conn.state is not TcpState.CLOSED:
                conn.abort()
                self.touch(conn)
            raise
        return TCPStream(self, conn)

    async def open_tcp_listener(self, port: int, *, backlog: int = 128, **options: Any) -> TCPListener:
        """Listen on ``port``; ``backlog`` bounds the accept queue (and twice it the SYN queue)."""
        await trio.lowlevel.checkpoint()
        return TCPListener(self, self.listen(port, backlog, self._merge(options)))

    def _merge(self, options: dict[str, Any]) -> ConnectionOptions:
        if not options:
            return self.options
        merged: ConnectionOptions = attrs.evolve(self.options, **options)
        merged.resolve()
        return merged


@asynccontextmanager
async def open_stack(
    link: Link,
    *,
    address: str | None = None,
    profile: str = "linux",
    close_timeout: float = 2.0,
    ephemeral_ports: range = DEFAULT_EPHEMERAL_PORTS,
    isn_secret: bytes | None = None,
    seed: int | None = None,
    **options: Any,
) -> AsyncIterator[Stack]:
    """Run a stack on ``link`` for the duration of the ``async with`` block.

    ``address`` defaults to the link's. Remaining keyword arguments are
    :class:`~tcpstack.tcp.config.ConnectionOptions` for every connection. Leaving the block
    closes connections gracefully, waits up to ``close_timeout`` seconds, then aborts the rest.
    """
    conn_options = ConnectionOptions(profile=profile, **options)
    conn_options.resolve()  # fail here, naming the option, rather than at the first connect
    stack = Stack(
        link, address or link.address, conn_options,
        ephemeral_ports=ephemeral_ports, isn_secret=isn_secret, seed=seed,
    )
    async with running(stack, close_timeout=close_timeout):
        yield stack
