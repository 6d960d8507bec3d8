"""Trio streams and listeners over the user-level stack.

``TCPStream`` is a :class:`trio.abc.HalfCloseableStream` and ``TCPListener`` a
:class:`trio.abc.Listener`, so code written for trio's own TCP (``trio.serve_listeners``, stream
helpers) runs on this stack unchanged. ``stream.info()`` returns the connection's
:class:`~tcpstack.tcp.info.TCPInfo` as of the call, synchronously; ``stream.options`` reads and
changes the socket options of a live connection; ``stream.events()`` iterates over the engine's
events.

Errors follow trio's conventions: a connection the network or the peer ended raises
:class:`trio.BrokenResourceError` whose message is the reason ("connection reset by peer",
"connection timed out", "user timeout") and whose ``__cause__`` is the matching ``OSError``
(with its errno); using a stream after ``aclose`` raises :class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import collections
import errno
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import attrs
import trio

from tcpstack.activity import Activity
from tcpstack.links.base import Link
from tcpstack.listeners import ListenState
from tcpstack.stack import DEFAULT_BATCH, DEFAULT_EPHEMERAL_PORTS, StackCore, running
from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions, KeepaliveOptions
from tcpstack.tcp.events import Event
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import (
    ST_CLOSE_WAIT,
    ST_CLOSED,
    ST_CLOSING,
    ST_ESTABLISHED,
    ST_FIN_WAIT_1,
    ST_FIN_WAIT_2,
    ST_LAST_ACK,
    ST_TIME_WAIT,
)
from tcpstack.waiters import Ready

__all__ = ["Stack", "TCPStream", "TCPListener", "StreamOptions", "open_stack"]

DEFAULT_RECEIVE_SIZE = 65536
EVENT_BUFFER = 1024

_SYNCHRONIZED_OR_LATER = frozenset(
    {
        ST_ESTABLISHED,
        ST_FIN_WAIT_1,
        ST_FIN_WAIT_2,
        ST_CLOSE_WAIT,
        ST_CLOSING,
        ST_LAST_ACK,
        ST_TIME_WAIT,
    }
)


class StreamOptions:
    """The socket options of one live connection, read and set as attributes.

    Setting one applies it at once, as ``setsockopt`` does on Linux (see
    :mod:`tcpstack.tcp.sockopts` for when each takes effect); a bad value raises ``ValueError``
    and changes nothing. ``keepalive`` accepts ``True``/``False`` (keeping the idle, interval
    and count) or a :class:`~tcpstack.tcp.config.KeepaliveOptions`.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: TCPStream) -> None:
        self._stream = stream

    def _get(self) -> ConnectionOptions:
        return self._stream.conn.options

    def update(self, **changes: Any) -> None:
        """Set several options at once (validated together: all or nothing)."""
        stream = self._stream
        if stream._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if "keepalive" in changes and isinstance(changes["keepalive"], bool):
            changes["keepalive"] = attrs.evolve(self.keepalive, enabled=changes["keepalive"])
        stream.conn.set_options(**changes)
        stream.stack.touch(stream.conn)  # nodelay may release held data; timers may move

    @property
    def nodelay(self) -> bool:
        """TCP_NODELAY: send small segments at once instead of waiting (RFC 896 Nagle off)."""
        return self._get().nodelay

    @nodelay.setter
    def nodelay(self, value: bool) -> None:
        self.update(nodelay=value)

    @property
    def congestion(self) -> str:
        """TCP_CONGESTION: the congestion control algorithm ("cubic", "reno", ...)."""
        return self._get().congestion

    @congestion.setter
    def congestion(self, value: str) -> None:
        self.update(congestion=value)

    @property
    def keepalive(self) -> KeepaliveOptions:
        """SO_KEEPALIVE with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT."""
        return self._get().keepalive

    @keepalive.setter
    def keepalive(self, value: bool | KeepaliveOptions) -> None:
        self.update(keepalive=value)

    @property
    def send_buffer(self) -> int:
        """SO_SNDBUF, bytes."""
        return self._stream.conn.opts.send_buffer

    @send_buffer.setter
    def send_buffer(self, value: int) -> None:
        self.update(send_buffer=value)

    @property
    def receive_buffer(self) -> int:
        """SO_RCVBUF, bytes."""
        return self._stream.conn.opts.receive_buffer

    @receive_buffer.setter
    def receive_buffer(self, value: int) -> None:
        self.update(receive_buffer=value)

    @property
    def user_timeout(self) -> float | None:
        """TCP_USER_TIMEOUT (RFC 5482), seconds; None (or setting 0) for the default."""
        return self._get().user_timeout

    @user_timeout.setter
    def user_timeout(self, value: float | None) -> None:
        self.update(user_timeout=value)

    @property
    def mss(self) -> int:
        """The MSS segments are sent with now (TCP_MAXSEG as read on a connected socket)."""
        return int(self._stream.conn.mss_cache)

    def __repr__(self) -> str:
        return (
            f"StreamOptions(nodelay={self.nodelay}, congestion={self.congestion!r}, "
            f"keepalive={self.keepalive}, send_buffer={self.send_buffer}, "
            f"receive_buffer={self.receive_buffer}, user_timeout={self.user_timeout})"
        )


class TCPStream(trio.abc.HalfCloseableStream):
    """One TCP connection of a :class:`Stack`, as a trio stream."""

    def __init__(self, stack: StackCore, conn: Connection) -> None:
        self.stack = stack
        self.conn = conn
        self._sending = False
        self._receiving = False
        self._eof_sent = False
        self._closed = False
        # Made by the first events() read: most streams never iterate their events.
        self._events: collections.deque[Event] | None = None
        self._event_limit = EVENT_BUFFER
        self._events_dropped = 0

    # -------------------------------------------------------------- introspection
    @property
    def options(self) -> StreamOptions:
        """The connection's socket options (a view: reads and writes go to the connection).

        Made on each access rather than held: a view held by the stream would be a reference
        cycle per stream, left for the garbage collector on every connection."""
        return StreamOptions(self)

    @property
    def local(self) -> tuple[str, int]:
        return self.conn.local

    @property
    def remote(self) -> tuple[str, int]:
        return self.conn.remote

    def info(self) -> TCPInfo:
        """The connection's TCP state, current to this instant."""
        return self.conn.info(trio.current_time())

    @property
    def events_dropped(self) -> int:
        """Events lost because nobody read them in time (here, and in the engine's own buffer)."""
        return self._events_dropped + self.conn.events_dropped

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events as they happen, ending when the connection is CLOSED. At most
        ``EVENT_BUFFER`` are held between reads; older ones are dropped and counted in
        :attr:`events_dropped`."""
        while True:
            self._collect_events()
            events = self._events
            while events:
                yield events.popleft()
            conn = self.conn
            if conn.state is ST_CLOSED:
                return
            # Wake for new events (in the engine, or moved here by another task's wait), not
            # for every segment; CLOSED and errors wake every waiter anyway.
            await self.stack.wait_changed(conn, self._events_ready)

    def _collect_events(self) -> None:
        new = self.conn.drain_events()
        if not new:
            return
        events = self._events
        if events is None:
            events = self._events = collections.deque()
        events.extend(new)
        excess = len(events) - self._event_limit
        if excess > 0:
            self._events_dropped += excess
            for _ in range(excess):
                events.popleft()

    def _raise_broken(self) -> NoReturn:
        exc = self.stack.connection_error(self.conn)
        if exc is None:
            exc = OSError(errno.ENOTCONN, f"connection closed (state {self.conn.state.name})")
        raise trio.BrokenResourceError(exc.strerror or str(exc)) from exc

    async def _wait(self, ready: Ready | None = None) -> None:
        self._collect_events()
        await self.stack.wait_changed(self.conn, ready)

    def _send_ready(self, remaining: int) -> bool:
        """A blocked sender's condition: room for the rest of its data, or free space of at
        least half the bytes queued (Linux's sk_stream_is_writeable: sk_stream_wspace >=
        sk_stream_min_wspace), so it wakes a few times per window, not on every ACK."""
        if self._closed:
            return True
        conn = self.conn
        space = conn.send_space
        return space >= remaining or (space > 0 and 2 * space >= len(conn.sndbuf))

    def _events_ready(self) -> bool:
        return bool(self.conn.events or self._events)

    def _receive_ready(self) -> bool:
        conn = self.conn
        return self._closed or conn.readable_bytes > 0 or conn.rcv.fin_received

    # -------------------------------------------------------------- trio.abc.Stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._eof_sent:
            raise trio.ClosedResourceError("the send side was closed by send_eof()")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            conn = self.conn
            meter = self.stack.meter
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed while sending")
                if conn.error is not None or conn.state is ST_CLOSED:
                    self._raise_broken()
                if meter.enabled:
                    started = time.perf_counter_ns()
                    accepted = conn.send(view)
                    meter.add(Activity.COPY_FROM_APP, time.perf_counter_ns() - started, accepted)
                else:
                    accepted = conn.send(view)
                if accepted:
                    view = view[accepted:]
                    self.stack.touch(conn)
                if view:
                    await self._wait(functools.partial(self._send_ready, len(view)))
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        conn = self.conn
        while (
            conn.send_space == 0 and conn.error is None and conn.state is not ST_CLOSED
            and not self._closed
        ):
            await self._wait(lambda: self._closed or conn.send_space > 0)
        await trio.lowlevel.checkpoint()

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
            conn = self.conn
            meter = self.stack.meter
            while True:
                if meter.enabled:
                    started = time.perf_counter_ns()
                    data = conn.receive(max_bytes)
                    meter.add(Activity.COPY_TO_APP, time.perf_counter_ns() - started, len(data))
                else:
                    data = conn.receive(max_bytes)
                if data:
                    self.stack.touch(conn)  # the window may open: let a window update out
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if conn.at_eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed while receiving")
                if conn.error is not None or conn.state is ST_CLOSED:
                    self._raise_broken()
                await self._wait(self._receive_ready)
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        if self.conn.error is not None:
            self._raise_broken()
        self._eof_sent = True
        self.conn.shutdown_write()
        self.stack.touch(self.conn)

    async def aclose(self) -> None:
        """Close both directions: a FIN after the queued data (a RST if received data was left
        unread, as Linux does, RFC 2525 2.17). Does not wait for the peer."""
        if not self._closed:
            self._closed = True
            self.conn.close()
            self.stack.touch(self.conn)
        await trio.lowlevel.checkpoint()


class TCPListener(trio.abc.Listener[TCPStream]):
    """A listening port of a :class:`Stack`."""

    def __init__(self, stack: StackCore, listen: ListenState) -> None:
        self.stack = stack
        self._listen = listen

    @property
    def port(self) -> int:
        return self._listen.port

    @property
    def backlog(self) -> int:
        return self._listen.backlog

    async def accept(self) -> TCPStream:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._listen.closed:
                raise trio.ClosedResourceError("the listener is closed")
            queue = self._listen.accept_queue
            while queue:
                conn = queue.popleft()
                if conn.state is ST_CLOSED:
                    continue  # reset while it waited in the queue (Linux returns it; we skip)
                if not waited:
                    # Parking was the schedule point already; a second one would cost another
                    # wake-up per accept (trio's own socket accept does not add one either).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return TCPStream(self.stack, conn)
            await self.stack.wait_accept(self._listen)
            waited = True

    async def aclose(self) -> None:
        if not self._listen.closed:
            self.stack.unlisten(self._listen)
        await trio.lowlevel.checkpoint()


class Stack(StackCore):
    """A user-level TCP/IP stack: open streams and listeners, inspect every connection."""

    async def open_tcp_stream(self, host: str, port: int, **options: Any) -> TCPStream:
        """Connect to ``host:port``; return once ESTABLISHED, or raise ``OSError`` with the reason
        (``ConnectionRefusedError``, ``TimeoutError``, or an ``OSError`` with errno
        EHOSTUNREACH/ENETUNREACH when ICMP said so and the SYN retries ran out).

        ``options`` override the stack's :class:`~tcpstack.tcp.config.ConnectionOptions`.
        """
        conn = self.connect(host, port, self._merge(options))
        try:
            while conn.state not in _SYNCHRONIZED_OR_LATER:
                if conn.error is not None or conn.state is ST_CLOSED:
                    exc = self.connection_error(conn) or OSError(errno.ECONNABORTED, "closed")
                    raise OSError(
                        exc.errno, f"connect to {host}:{port} failed: {exc.strerror}"
                    ) from exc
                await self.wait_changed(conn)
        except BaseException:
            if conn.state is not ST_CLOSED:
                conn.abort()
                self.touch(conn)
            raise
        return TCPStream(self, conn)

    async def open_tcp_listener(self, port: int, *, backlog: int = 128, **options: Any) -> TCPListener:
        """Listen on ``port``; ``backlog`` bounds both the SYN queue and the accept queue."""
        await trio.lowlevel.checkpoint()
        return TCPListener(self, self.listen(port, backlog, self._merge(options)))

    def _merge(self, options: dict[str, Any]) -> ConnectionOptions:
        if not options:
            return self.options
        merged: ConnectionOptions = attrs.evolve(self.options, **options)
        merged.resolve()
        return merged


def _owned_ports(link: Link) -> range | None:
    """The port range a link (or the link under its middleware) receives for, if it has one."""
    inner: Link | None = link
    while inner is not None:
        ports = getattr(inner, "ports", None)
        if isinstance(ports, range):
            return ports
        inner = getattr(inner, "inner", None)
    return None


@asynccontextmanager
async def open_stack(
    link: Link,
    *,
    address: str | None = None,
    profile: str = "linux",
    close_timeout: float = 2.0,
    ephemeral_ports: range | None = None,
    isn_secret: bytes | None = None,
    seed: int | None = None,
    syncookies: int = 1,
    accounting: bool = False,
    batch: int = DEFAULT_BATCH,
    **options: Any,
) -> AsyncIterator[Stack]:
    """Run a stack on ``link`` for the duration of the ``async with`` block.

    ``address`` defaults to the link's; ``ephemeral_ports`` to the ports the link owns if it owns
    some (a :class:`~tcpstack.links.pcap.PcapLink` receives and guards only its range), else
    ``DEFAULT_EPHEMERAL_PORTS``; the ``mtu`` connection option to the link's MTU (capped at
    65535). ``syncookies`` is ``net.ipv4.tcp_syncookies`` (0, 1, 2); ``accounting`` turns on
    :meth:`Stack.activity`; ``batch`` bounds the packets read per wake-up. Remaining keyword
    arguments are :class:`~tcpstack.tcp.config.ConnectionOptions` for every connection. Leaving
    the block closes connections gracefully, waits up to ``close_timeout`` seconds, then aborts
    the rest.
    """
    if ephemeral_ports is None:
        ephemeral_ports = _owned_ports(link) or DEFAULT_EPHEMERAL_PORTS
    options.setdefault("mtu", min(link.mtu, 65535))
    conn_options = ConnectionOptions(profile=profile, **options)
    conn_options.resolve()  # fail here, naming the option, rather than at the first connect
    stack = Stack(
        link, address or link.address, conn_options,
        ephemeral_ports=ephemeral_ports, isn_secret=isn_secret, seed=seed,
        syncookies=syncookies, accounting=accounting, batch=batch,
    )
    async with running(stack, close_timeout=close_timeout):
        yield stack
