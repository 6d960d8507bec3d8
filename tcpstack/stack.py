"""The stack runtime: one link, many connections, two tasks, one nursery.

:func:`open_stack` starts the bottom half (drain the link in batches, parse, demultiplex, feed the
engines) and the timer task (one deadline over all connections) in a nursery the stack owns.
Everything that makes a connection emit segments (arrivals, timers, application calls) ends in
:meth:`StackCore.flush`, which polls the engines, builds the packets and hands them to the link as one
batch. The engines themselves (:mod:`tcpstack.tcp`) never see trio.

This is the only module that owns tasks; :mod:`tcpstack.api` wraps connections as trio streams.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from tcpstack.isn import IsnGenerator
from tcpstack.links.base import Link
from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import TcpState
from tcpstack.wire import ChecksumError, MalformedPacket, build_packet, parse_packet
from tcpstack.wire.segment import IcmpMessage, TcpFlags, TcpSegment

__all__ = ["StackCore", "StackStats", "ConnectionEntry", "running"]

log = logging.getLogger(__name__)

# Key of a connection in the demultiplexing table: (local port, remote address, remote port).
# The local address is the stack's own.
ConnKey = tuple[int, str, int]

DEFAULT_EPHEMERAL_PORTS = range(49152, 65536)  # RFC 6335 section 6 dynamic ports
DEFAULT_BATCH = 64


@attrs.define(slots=True)
class StackStats:
    """What the bottom half saw: counted, never raised."""

    packets_in: int = 0
    packets_out: int = 0
    malformed: int = 0
    checksum_errors: int = 0
    not_for_us: int = 0
    no_connection: int = 0  # segments to closed ports (answered with RST unless they were RSTs)
    resets_sent: int = 0
    icmp_in: int = 0
    syn_queue_overflows: int = 0
    accept_queue_overflows: int = 0


@attrs.frozen(slots=True)
class ConnectionEntry:
    """One row of :meth:`StackCore.connections`: what ``ss -ti`` prints for a kernel socket."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: TcpState
    info: TCPInfo


class _Waiters:
    """Tasks parked on one connection, woken whenever the engine may have changed."""

    __slots__ = ("lot",)

    def __init__(self) -> None:
        self.lot = trio.lowlevel.ParkingLot()


class _Listen:
    """A listening port: bounded SYN queue (half-open) and accept queue (established)."""

    def __init__(self, port: int, backlog: int, options: ConnectionOptions) -> None:
        self.port = port
        self.backlog = backlog
        self.options = options
        self.half_open: set[ConnKey] = set()
        self.accept_queue: deque[Connection] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.closed = False


class StackCore:
    """The runtime of a user-level TCP/IP stack bound to one link and one IPv4 address.

    :class:`tcpstack.api.Stack` adds the application-facing calls; create one with
    :func:`tcpstack.open_stack`. Attributes are read-only from the application's side.
    """

    def __init__(
        self,
        link: Link,
        address: str,
        options: ConnectionOptions,
        *,
        ephemeral_ports: range = DEFAULT_EPHEMERAL_PORTS,
        isn_secret: bytes | None = None,
        seed: int | None = None,
    ) -> None:
        self.link = link
        self.address = address
        self.options = options
        self.stats = StackStats()
        self._ephemeral = ephemeral_ports
        self._isn = IsnGenerator(isn_secret)
        self._random = random.Random(seed)
        self._conns: dict[ConnKey, Connection] = {}
        self._waiters: dict[int, _Waiters] = {}
        self._owner: dict[int, _Listen] = {}  # half-open passive connections -> their listener
        self._listeners: dict[int, _Listen] = {}
        self._ids = itertools.count(1)
        # One heap entry per connection at most: the earliest deadline it has asked for. A
        # deadline that moves later (an RTO restarted by an ACK, say) keeps its entry; when that
        # entry comes due, on_timer does nothing early and the poll after it files the real one.
        self._deadlines: list[tuple[float, int, Connection]] = []
        self._scheduled: dict[int, float] = {}
        self._timer_scope: trio.CancelScope | None = None
        self._dirty: dict[int, Connection] = {}
        self._checksum = not link.checksum_offload
        self._closing = False

    # ------------------------------------------------------------------ public API

    def connections(self) -> list[ConnectionEntry]:
        """Every connection's 4-tuple, state and TCPInfo, current to this instant."""
        now = trio.current_time()
        return [
            ConnectionEntry(
                local=(self.address, key[0]),
                remote=(key[1], key[2]),
                state=conn.state,
                info=conn.info(now),
            )
            for key, conn in self._conns.items()
        ]

    def connect(self, host: str, port: int, options: ConnectionOptions | None = None) -> Connection:
        """Start an active open and return the engine; :mod:`tcpstack.api` awaits establishment."""
        if self._closing:
            raise trio.ClosedResourceError("the stack is closing")
        opts = options or self.options
        local_port = self._allocate_port(host, port)
        now = trio.current_time()
        conn = Connection(
            local=(self.address, local_port),
            remote=(host, port),
            iss=self._isn(self.address, local_port, host, port, now),
            options=opts,
            conn_id=next(self._ids),
        )
        self._add(conn, (local_port, host, port))
        conn.open_active(now)
        self.touch(conn)
        return conn

    def listen(self, port: int, backlog: int, options: ConnectionOptions | None = None) -> _Listen:
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {backlog}")
        if port in self._listeners:
            raise OSError(98, f"port {port} is already listening (EADDRINUSE)")
        listener = _Listen(port, backlog, options or self.options)
        self._listeners[port] = listener
        return listener

    def unlisten(self, listener: _Listen) -> None:
        listener.closed = True
        self._listeners.pop(listener.port, None)
        for conn in listener.accept_queue:
            conn.abort()
            self._mark(conn)
        listener.accept_queue.clear()
        listener.lot.unpark_all()
        self.flush()

    async def wait_changed(self, conn: Connection) -> None:
        """Park until the engine of ``conn`` has processed something (segment, timer, close)."""
        await self._waiters[conn.conn_id].lot.park()

    async def wait_accept(self, listener: _Listen) -> None:
        await listener.lot.park()

    def flush(self) -> None:
        """Transmit what any touched engine wants to send; re-arm timers; wake waiters."""
        if self._dirty:
            now = trio.current_time()
            dirty = list(self._dirty.values())
            self._dirty.clear()
            packets: list[bytes] = []
            for conn in dirty:
                self._poll(conn, now, packets)
            self._send(packets)

    def touch(self, conn: Connection) -> None:
        """Mark ``conn`` as changed by an application call and flush at once."""
        self._mark(conn)
        self.flush()

    # ------------------------------------------------------------------ tasks

    async def _receive_loop(self) -> None:
        link = self.link
        while True:
            try:
                batch = await link.receive_batch(DEFAULT_BATCH)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            now = trio.current_time()
            for packet in batch:
                self._input(packet, now)
            self.flush()

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._earliest()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                deadline, conn_id, conn = heapq.heappop(heap)
                if self._scheduled.get(conn_id) != deadline:
                    continue  # superseded by an earlier entry, or the connection is gone
                del self._scheduled[conn_id]
                conn.on_timer(now)
                self._mark(conn)
            self.flush()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _key(conn: Connection) -> ConnKey:
        return (conn.local[1], conn.remote[0], conn.remote[1])

    def _earliest(self) -> float:
        return self._deadlines[0][0] if self._deadlines else float("inf")

    def _add(self, conn: Connection, key: ConnKey) -> None:
        self._conns[key] = conn
        self._waiters[conn.conn_id] = _Waiters()

    def _allocate_port(self, host: str, port: int) -> int:
        span = len(self._ephemeral)
        start = self._random.randrange(span)
        for i in range(span):
            candidate = self._ephemeral[(start + i) % span]
            if candidate not in self._listeners and (candidate, host, port) not in self._conns:
                return candidate
        raise OSError(99, "no ephemeral port is free for this destination (EADDRNOTAVAIL)")

    def _mark(self, conn: Connection) -> None:
        self._dirty[conn.conn_id] = conn

    def _input(self, packet: bytes, now: float) -> None:
        self.stats.packets_in += 1
        try:
            seg = parse_packet(packet, verify_checksum=self._checksum)
        except ChecksumError:
            self.stats.checksum_errors += 1
            return
        except MalformedPacket:
            self.stats.malformed += 1
            return
        if isinstance(seg, IcmpMessage):
            self._icmp(seg, now)
            return
        if seg.dst != self.address:
            self.stats.not_for_us += 1
            return
        key = (seg.dport, seg.src, seg.sport)
        conn = self._conns.get(key)
        if conn is not None:
            conn.on_segment(seg, now)
            self._mark(conn)
            return
        listener = self._listeners.get(seg.dport)
        if listener is not None and seg.flags & (TcpFlags.SYN | TcpFlags.ACK | TcpFlags.RST) == TcpFlags.SYN:
            self._passive_open(listener, seg, key, now)
            return
        self.stats.no_connection += 1
        self._reset_closed(seg)

    def _passive_open(self, listener: _Listen, syn: TcpSegment, key: ConnKey, now: float) -> None:
        if len(listener.half_open) + len(listener.accept_queue) >= 2 * listener.backlog:
            # Without SYN cookies a full queue drops the SYN; the peer retransmits it.
            self.stats.syn_queue_overflows += 1
            return
        conn = Connection.from_syn(
            syn,
            iss=self._isn(self.address, syn.dport, syn.src, syn.sport, now),
            options=listener.options,
            now=now,
            conn_id=next(self._ids),
        )
        self._add(conn, key)
        listener.half_open.add(key)
        self._owner[conn.conn_id] = listener
        self._mark(conn)

    def _reset_closed(self, seg: TcpSegment) -> None:
        # RFC 9293 section 3.10.7.1: a segment to a CLOSED port gets a RST, unless it is one.
        if seg.flags & TcpFlags.RST:
            return
        if seg.flags & TcpFlags.ACK:
            rst = TcpSegment(
                src=self.address, dst=seg.src, sport=seg.dport, dport=seg.sport,
                seq=seg.ack, flags=TcpFlags.RST,
            )
        else:
            rst = TcpSegment(
                src=self.address, dst=seg.src, sport=seg.dport, dport=seg.sport, seq=0,
                ack=(seg.seq + seg.seg_len) & 0xFFFFFFFF, flags=TcpFlags.RST | TcpFlags.ACK,
            )
        self.stats.resets_sent += 1
        self._send([build_packet(rst, checksum=self._checksum)])

    def _icmp(self, msg: IcmpMessage, now: float) -> None:
        self.stats.icmp_in += 1
        if msg.quoted_sport is None or msg.quoted_dport is None or msg.quoted_dst is None:
            return
        conn = self._conns.get((msg.quoted_sport, msg.quoted_dst, msg.quoted_dport))
        if conn is not None and hasattr(conn, "on_icmp"):
            conn.on_icmp(msg, now)
            self._mark(conn)

    def _poll(self, conn: Connection, now: float, packets: list[bytes]) -> None:
        checksum = self._checksum
        for seg in conn.poll_transmit(now):
            packets.append(build_packet(seg, checksum=checksum))
        deadline = conn.next_deadline()
        if deadline is not None:
            scheduled = self._scheduled.get(conn.conn_id)
            if scheduled is None or deadline < scheduled:
                # An earlier entry replaces the later one (left in the heap, skipped when due).
                self._scheduled[conn.conn_id] = deadline
                heapq.heappush(self._deadlines, (deadline, conn.conn_id, conn))
                scope = self._timer_scope
                if scope is not None and deadline < scope.deadline:
                    scope.deadline = deadline
        self._after_change(conn)

    def _after_change(self, conn: Connection) -> None:
        state = conn.state
        listener = self._owner.get(conn.conn_id)
        if listener is not None and state is not TcpState.SYN_RECEIVED:
            key = self._key(conn)
            listener.half_open.discard(key)
            del self._owner[conn.conn_id]
            if state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) and not listener.closed:
                if len(listener.accept_queue) < listener.backlog:
                    listener.accept_queue.append(conn)
                    listener.lot.unpark_all()
                else:
                    self.stats.accept_queue_overflows += 1
                    conn.abort()
        waiters = self._waiters.get(conn.conn_id)
        if waiters is not None:
            waiters.lot.unpark_all()
        if state is TcpState.CLOSED:
            self._conns.pop(self._key(conn), None)
            self._waiters.pop(conn.conn_id, None)
            self._owner.pop(conn.conn_id, None)
            self._scheduled.pop(conn.conn_id, None)
            if waiters is not None:
                waiters.lot.unpark_all()

    def _send(self, packets: list[bytes]) -> None:
        if packets:
            self.stats.packets_out += len(packets)
            try:
                self.link.send_batch(packets)
            except trio.ClosedResourceError:
                pass

    async def _shutdown(self, grace: float) -> None:
        """Close every connection gracefully, wait up to ``grace`` seconds, abort the rest."""
        self._closing = True
        for listener in list(self._listeners.values()):
            self.unlisten(listener)
        for conn in list(self._conns.values()):
            conn.close()
            self._mark(conn)
        self.flush()
        with trio.move_on_after(grace):
            while any(
                c.state not in (TcpState.CLOSED, TcpState.TIME_WAIT) for c in self._conns.values()
            ):
                conn = next(
                    c for c in self._conns.values()
                    if c.state not in (TcpState.CLOSED, TcpState.TIME_WAIT)
                )
                await self.wait_changed(conn)
        for conn in list(self._conns.values()):
            if conn.state is not TcpState.CLOSED:
                conn.abort()
                self._mark(conn)
        self.flush()


@asynccontextmanager
async def running(stack: StackCore, *, close_timeout: float = 2.0) -> AsyncIterator[StackCore]:
    """Run ``stack``'s tasks for the duration of the ``async with`` block.

    Leaving the block closes connections gracefully, waits up to ``close_timeout`` seconds, then
    aborts the rest; the stack's tasks end with it.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stack._receive_loop)
        nursery.start_soon(stack._timer_loop)
        try:
            yield stack
        finally:
            with trio.CancelScope(shield=True):
                await stack._shutdown(close_timeout)
            nursery.cancel_scope.cancel()
