"""The stack runtime: one link, many connections, two tasks, one nursery.

:func:`running` starts the bottom half (drain the link in batches, parse, demultiplex, feed the
engines) and the timer task (one deadline over all connections) in a nursery the stack owns.
Everything that makes a connection emit segments (arrivals, timers, application calls) ends in
:meth:`StackCore.flush`, which polls the engines, builds the packets and hands them to the link as one
batch. The engines themselves (:mod:`tcpstack.tcp`) never see trio.

Passive opens (bounded SYN and accept queues, SYN cookies) live in :mod:`tcpstack.listeners`,
ICMP error handling (RFC 1122, RFC 5927) in :mod:`tcpstack.icmp_errors`, what the stack reports
about itself (connections, activity accounting) in :mod:`tcpstack.observe`; all three are mixins
of :class:`StackCore`.

This is the only module that owns tasks; :mod:`tcpstack.api` wraps connections as trio streams.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import math
import random
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from tcpstack.activity import Activity, ActivityMeter
from tcpstack.icmp_errors import IcmpMixin
from tcpstack.isn import IsnGenerator, SynCookies
from tcpstack.links.base import Link
from tcpstack.listeners import COOKIE_WINDOW, ConnKey, ListenerMixin, ListenState
from tcpstack.observe import ConnectionEntry, ObserveMixin
from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions, SynFinPolicy, get_profile
from tcpstack.tcp.state import ST_CLOSED, ST_SYN_RECEIVED, ST_TIME_WAIT
from tcpstack.waiters import Ready, Waiters
from tcpstack.wire import ChecksumError, MalformedPacket, build_packet, parse_packet
from tcpstack.wire.segment import (
    IcmpMessage,
    TcpFlags,
    TcpSegment,
)

__all__ = ["StackCore", "StackStats", "ConnectionEntry", "running"]

log = logging.getLogger(__name__)

MASK = 0xFFFFFFFF
DEFAULT_EPHEMERAL_PORTS = range(49152, 65536)  # RFC 6335 section 6 dynamic ports
DEFAULT_BATCH = 64
_HEAP_SLACK = 1024  # stale timer-heap entries tolerated beyond twice the live ones
_SYN, _ACK, _RST, _FIN = TcpFlags.SYN, TcpFlags.ACK, TcpFlags.RST, TcpFlags.FIN

_ENGINE_ERRNO = {
    "connection reset by peer": errno.ECONNRESET,
    "connection refused": errno.ECONNREFUSED,
    "connection timed out": errno.ETIMEDOUT,
    "user timeout": errno.ETIMEDOUT,
    "connection aborted": errno.ECONNABORTED,
}


@attrs.define(slots=True)
class StackStats:
    """What the bottom half saw: counted, never raised (names after Linux's netstat MIBs)."""

    packets_in: int = 0
    packets_out: int = 0
    malformed: int = 0
    checksum_errors: int = 0
    not_for_us: int = 0
    no_connection: int = 0  # segments to closed ports (answered with RST unless they were RSTs)
    resets_sent: int = 0
    icmp_in: int = 0
    icmp_ignored: int = 0  # not an error about one of our connections
    icmp_out_of_window: int = 0  # quoted sequence number outside snd_una..snd_nxt (RFC 5927)
    syn_queue_overflows: int = 0  # SYNs that met a full SYN queue (answered by cookie if on)
    accept_queue_overflows: int = 0  # ListenOverflows: SYNs and handshake ACKs dropped
    syncookies_sent: int = 0
    syncookies_recv: int = 0
    syncookies_failed: int = 0
    # A packet whose processing raised: a bug in the stack, never a reason to stop serving the
    # other connections. Counted and logged (at most once a second), the packet dropped.
    internal_errors: int = 0
    synfin_dropped: int = 0  # SYN|FIN at a listener, dropped as the profile says


class StackCore(ListenerMixin, IcmpMixin, ObserveMixin):
    """The runtime of a user-level TCP/IP stack bound to one link and one IPv4 address.

    :class:`tcpstack.api.Stack` adds the application-facing calls; create one with
    :func:`tcpstack.open_stack`. Attributes are read-only from the application's side.
    ``syncookies`` follows ``net.ipv4.tcp_syncookies``: 0 off, 1 when a SYN queue overflows,
    2 always.
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
        syncookies: int = 1,
        accounting: bool = False,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if syncookies not in (0, 1, 2):
            raise ValueError(f"syncookies must be 0, 1 or 2, got {syncookies!r}")
        if len(ephemeral_ports) == 0 or ephemeral_ports[0] < 1 or ephemeral_ports[-1] > 65535:
            raise ValueError(f"ephemeral_ports must be a non-empty range within 1..65535, got {ephemeral_ports}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.link = link
        self.address = address
        self.options = options
        self.stats = StackStats()
        self.syncookies = syncookies
        self.meter = ActivityMeter(accounting)
        self._batch = batch
        self._ephemeral = ephemeral_ports
        self._isn = IsnGenerator(isn_secret)
        self._cookies = SynCookies(address, None if isn_secret is None else isn_secret[::-1])
        self._random = random.Random(seed)
        self._conns: dict[ConnKey, Connection] = {}
        self._waiters: dict[int, Waiters] = {}
        self._owner: dict[int, ListenState] = {}  # half-open passive connections -> their listener
        self._listeners: dict[int, ListenState] = {}
        self._soft_errors: weakref.WeakKeyDictionary[Connection, OSError] = weakref.WeakKeyDictionary()
        self._ids = itertools.count(1)
        # One live heap entry per connection at most: the earliest deadline it has asked for. A
        # deadline that moves later (an RTO restarted by an ACK, say) keeps its entry; when that
        # entry comes due, on_timer does nothing early and the poll after it files the real one.
        # Entries hold the connection's id, not the connection: one the stack has forgotten is
        # freed at once rather than when its last entry comes due (up to 2 MSL later), and
        # tuples of two numbers are left alone by the cyclic garbage collector.
        self._deadlines: list[tuple[float, int]] = []
        self._scheduled: dict[int, tuple[float, Connection]] = {}
        self._timer_scope: trio.CancelScope | None = None
        self._dirty: dict[int, Connection] = {}
        self._checksum = not link.checksum_offload
        self._closing = False
        self._last_error_log = float("-inf")

    # ------------------------------------------------------------------ public API

    def connection_error(self, conn: Connection) -> OSError | None:
        """The error ``conn`` failed with, as an ``OSError`` with its errno (``SO_ERROR``).

        A timeout after an ICMP soft error reports that error, as Linux's tcp_write_err reports
        ``sk_err_soft``: a connect to an unreachable host ends in EHOSTUNREACH, not ETIMEDOUT.
        """
        error = conn.error
        if error is None:
            return None
        soft = self._soft_errors.get(conn)
        code = _ENGINE_ERRNO.get(error, errno.EIO)
        if soft is not None and code == errno.ETIMEDOUT:
            return soft
        return OSError(code, error)

    def connect(self, host: str, port: int, options: ConnectionOptions | None = None) -> Connection:
        """Start an active open and return the engine; :mod:`tcpstack.api` awaits establishment."""
        if self._closing:
            raise trio.ClosedResourceError("the stack is closing")
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
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

    def listen(self, port: int, backlog: int, options: ConnectionOptions | None = None) -> ListenState:
        if self._closing:
            raise trio.ClosedResourceError("the stack is closing")
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {backlog}")
        if port in self._listeners:
            raise OSError(errno.EADDRINUSE, f"port {port} is already listening")
        listener = ListenState(port, backlog, options or self.options)
        self._listeners[port] = listener
        return listener

    def unlisten(self, listener: ListenState) -> None:
        listener.closed = True
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]
        for conn in listener.accept_queue:
            conn.abort()
            self._mark(conn)
        listener.accept_queue.clear()
        # Half-open connections die with their listener (Linux inet_csk_listen_stop).
        for key in list(listener.half_open):
            half_open = self._conns.get(key)
            if half_open is not None:
                half_open.abort()
                self._mark(half_open)
        listener.lot.unpark_all()
        self.flush()

    async def wait_changed(self, conn: Connection, ready: Ready | None = None) -> None:
        """Park until the engine of ``conn`` has processed something (segment, timer, close)
        and, if given, ``ready()`` holds then; an error, TIME-WAIT or CLOSED wakes every
        waiter whatever its condition (:class:`~tcpstack.waiters.Waiters`). Returns at once
        (after a checkpoint) if the stack no longer holds the connection."""
        lot = self._waiters.get(conn.conn_id)
        if lot is None:
            if self._conns.get(self._key(conn)) is not conn:
                await trio.lowlevel.checkpoint()
                return
            # Created on first wait, not per connection: most idle connections never have a
            # waiter, and the object costs both time on the accept path and memory.
            lot = self._waiters[conn.conn_id] = Waiters()
        await lot.wait(ready)

    async def wait_accept(self, listener: ListenState) -> None:
        await listener.lot.park()

    def flush(self) -> None:
        """Transmit what any touched engine wants to send; re-arm timers; wake waiters."""
        while self._dirty:
            now = trio.current_time()
            dirty = self._dirty
            self._dirty = {}
            if self.meter.enabled:
                self._flush_accounted(dirty, now)
                continue
            checksum = self._checksum
            packets: list[bytes] = []
            scheduled = self._scheduled
            owner = self._owner
            waiters = self._waiters
            for conn in dirty.values():
                try:
                    segs = conn.poll_transmit(now)
                    if segs:  # most polls of a handshake or a close send nothing
                        packets += [build_packet(seg, checksum=checksum) for seg in segs]
                except Exception:
                    packets += self._output_failed(conn, now)
                # _schedule and _after_change, inlined: this loop runs once per segment
                # received and per application call, and most of the time neither acts.
                conn_id = conn.conn_id
                deadline = conn.timers._earliest  # conn.next_deadline(), inlined
                if deadline is not None:
                    if deadline < conn.last_now:
                        deadline = conn.last_now
                    entry = scheduled.get(conn_id)
                    if entry is None or deadline < entry[0] or (
                        deadline != entry[0] and conn.state is ST_TIME_WAIT
                    ):
                        self._file(conn, deadline)
                elif conn_id in scheduled:
                    # No timer runs any more (the handshake's RTO, once established): its heap
                    # entry is now stale, and must not wake the timer task when it comes due.
                    del scheduled[conn_id]
                if owner and conn_id in owner:
                    self._settle_passive(conn)
                lot = waiters.get(conn_id)
                if lot is not None:
                    state = conn.state
                    lot.wake(
                        everyone=state is ST_TIME_WAIT or state is ST_CLOSED
                        or conn.error is not None
                    )
                    if not lot:
                        del waiters[conn_id]  # see _after_change
                if conn.state is ST_CLOSED:
                    self._forget(conn)
            self._send(packets)

    def touch(self, conn: Connection) -> None:
        """Mark ``conn`` as changed by an application call and flush at once."""
        self._dirty[conn.conn_id] = conn
        self.flush()

    # ------------------------------------------------------------------ tasks

    async def _receive_loop(self) -> None:
        link = self.link
        meter = self.meter
        batch_size = self._batch
        while True:
            try:
                batch = await link.receive_batch(batch_size)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            now = trio.current_time()
            if meter.enabled:
                self._input_accounted(batch, now)
            else:
                # _parse and _dispatch_guarded inlined: two calls fewer per packet.
                stats = self.stats
                verify = self._checksum
                for packet in batch:
                    stats.packets_in += 1
                    try:
                        seg = parse_packet(packet, verify_checksum=verify)
                    except ChecksumError:
                        stats.checksum_errors += 1
                        continue
                    except MalformedPacket:
                        stats.malformed += 1
                        continue
                    try:
                        self._dispatch(seg, now)
                    except Exception:
                        self._internal_error(seg, now)
            self.flush()

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._earliest()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            heap = self._deadlines
            fired = 0
            started = time.perf_counter_ns() if self.meter.enabled else 0
            scheduled = self._scheduled
            while heap and heap[0][0] <= now:
                deadline, conn_id = heapq.heappop(heap)
                entry = scheduled.get(conn_id)
                if entry is None or entry[0] != deadline:
                    continue  # superseded by an earlier entry, or the connection is gone
                del scheduled[conn_id]
                conn = entry[1]
                conn.on_timer(now)
                fired += 1
                self._mark(conn)
            if started:
                self.meter.add(Activity.TIMERS, time.perf_counter_ns() - started, fired)
            self.flush()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _key(conn: Connection) -> ConnKey:
        return (conn.local[1], conn.remote[0], conn.remote[1])

    def _earliest(self) -> float:
        """The earliest live deadline. Stale heap entries (superseded by an earlier one, or left
        by a connection whose timers all stopped or which is gone) are dropped from the top here,
        so the timer task never wakes for them."""
        heap = self._deadlines
        scheduled = self._scheduled
        while heap:
            deadline, conn_id = heap[0]
            entry = scheduled.get(conn_id)
            if entry is not None and entry[0] == deadline:
                return deadline
            heapq.heappop(heap)
        return math.inf

    def _add(self, conn: Connection, key: ConnKey) -> None:
        # Every connection, active or passive, passes here: it learns whether the link cuts
        # super-segments (TSO/GSO); ConnectionOptions.tso decides whether it builds them. The
        # link cuts at its MTU less the headers, so only a connection whose MTU is the link's
        # may use it (a smaller MTU option would get pieces larger than its MSS).
        link = self.link
        conn.gso_max_size = link.gso_max_size if conn.pmtu == link.mtu else 0
        # The stack builds every segment into a packet as soon as it is polled, so payloads
        # may be views of the send buffer: the build is then their only copy.
        conn.sndbuf.views = True
        self._conns[key] = conn

    def _allocate_port(self, host: str, port: int) -> int:
        span = len(self._ephemeral)
        start = self._random.randrange(span)
        for i in range(span):
            candidate = self._ephemeral[(start + i) % span]
            if candidate not in self._listeners and (candidate, host, port) not in self._conns:
                return candidate
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral port is free for this destination")

    def _mark(self, conn: Connection) -> None:
        self._dirty[conn.conn_id] = conn

    def _parse(self, packet: bytes) -> TcpSegment | IcmpMessage | None:
        self.stats.packets_in += 1
        try:
            return parse_packet(packet, verify_checksum=self._checksum)
        except ChecksumError:
            self.stats.checksum_errors += 1
        except MalformedPacket:
            self.stats.malformed += 1
        return None

    def _dispatch_guarded(self, seg: TcpSegment | IcmpMessage, now: float) -> None:
        try:
            self._dispatch(seg, now)
        except Exception:
            self._internal_error(seg, now)

    def _internal_error(self, seg: TcpSegment | IcmpMessage, now: float) -> None:
        # One packet must not take the whole stack down (a remote peer could otherwise stop
        # every connection with one crafted segment); the bug still gets reported.
        self.stats.internal_errors += 1
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            log.exception("internal error while processing %r (dropped)", seg)

    def _output_failed(self, conn: Connection, now: float) -> list[bytes]:
        """``conn``'s output path raised: a bug in the engine or the codec. Abort that one
        connection (its stream fails with "internal error") and keep serving the others; the
        packets returned are its RST, if the engine can still build one."""
        self.stats.internal_errors += 1
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            log.exception("internal error while transmitting on %s -> %s (aborted)",
                          conn.local, conn.remote)
        if conn.error is None:
            conn.error = "internal error"
        try:
            conn.abort()
            # The RST tells the peer at once; if building it fails too, the peer learns on its
            # next segment, which meets no connection and is answered with a RST.
            return [build_packet(seg, checksum=self._checksum) for seg in conn.poll_transmit(now)]
        except Exception:
            return []

    def _dispatch(self, seg: TcpSegment | IcmpMessage, now: float) -> None:
        if isinstance(seg, IcmpMessage):
            self._icmp(seg, now)
            return
        if seg.dst != self.address:
            self.stats.not_for_us += 1
            return
        key = (seg.dport, seg.src, seg.sport)
        conn = self._conns.get(key)
        if conn is not None:
            if conn.state is ST_SYN_RECEIVED:
                if self._accept_queue_full(conn, seg):
                    # Linux tcp_check_req "listen_overflow": the handshake cannot complete into
                    # a full accept queue; drop the ACK, the peer's retransmission may find room.
                    self.stats.accept_queue_overflows += 1
                    return
                conn.on_segment(seg, now)
                self._settle_passive(conn)  # queue it now: later ACKs of this batch see it
            else:
                conn.on_segment(seg, now)
            self._mark(conn)
            return
        listener = self._listeners.get(seg.dport)
        if listener is not None:
            flags = int(seg.flags) & 0x16  # SYN, ACK, RST as an int (IntFlag ops are slow)
            if flags == 0x02:
                if seg.flags & _FIN:
                    # SYN|FIN at a listener: Linux always drops it; FreeBSD drops it when
                    # net.inet.tcp.drop_synfin=1 and otherwise takes the SYN, ignoring the FIN
                    # (the SYN-ACK acknowledges only the SYN).
                    policy = get_profile(listener.options.profile).synfin_policy
                    if policy is not SynFinPolicy.IGNORE_FIN:
                        self.stats.synfin_dropped += 1
                        return
                    seg = attrs.evolve(seg, flags=seg.flags & ~_FIN)
                self._listen_syn(listener, seg, key, now)
                return
            if flags == 0x10 and self.syncookies and (
                self.syncookies == 2 or now - listener.last_overflow < COOKIE_WINDOW
            ):
                if self._cookie_ack(listener, seg, key, now):
                    return
                self.stats.syncookies_failed += 1
        self.stats.no_connection += 1
        self._reset_closed(seg)

    def _reset_closed(self, seg: TcpSegment) -> None:
        # RFC 9293 section 3.10.7.1: a segment to a CLOSED port gets a RST, unless it is one.
        if seg.flags & _RST:
            return
        if seg.flags & _ACK:
            rst = TcpSegment(
                src=self.address, dst=seg.src, sport=seg.dport, dport=seg.sport,
                seq=seg.ack, flags=_RST,
            )
        else:
            rst = TcpSegment(
                src=self.address, dst=seg.src, sport=seg.dport, dport=seg.sport, seq=0,
                ack=(seg.seq + seg.seg_len) & MASK, flags=_RST | _ACK,
            )
        self.stats.resets_sent += 1
        self._send([build_packet(rst, checksum=self._checksum)])

    # ------------------------------------------------------------------ output and bookkeeping

    def _schedule(self, conn: Connection) -> None:
        deadline = conn.next_deadline()
        if deadline is not None:
            entry = self._scheduled.get(conn.conn_id)
            if entry is None or deadline < entry[0] or (
                deadline != entry[0] and conn.state is ST_TIME_WAIT
            ):
                # An earlier entry replaces the later one (left in the heap, skipped when due).
                # TIME-WAIT moves the deadline later once (the 2 MSL timer replaces the RTO
                # the handshake or the FIN left): filed at once, the earlier entry is skipped
                # when due instead of waking the connection only to file this one.
                self._file(conn, deadline)
        else:
            self._scheduled.pop(conn.conn_id, None)  # no timer runs: see flush()

    def _file(self, conn: Connection, deadline: float) -> None:
        scheduled = self._scheduled
        scheduled[conn.conn_id] = (deadline, conn)
        heap = self._deadlines
        heapq.heappush(heap, (deadline, conn.conn_id))
        if len(heap) > 2 * len(scheduled) + _HEAP_SLACK:
            # Mostly stale entries (timers moved earlier, or stopped, far ahead of the top):
            # rebuild from the live ones, so the heap stays within twice the connections.
            heap[:] = [(when, conn_id) for conn_id, (when, _) in scheduled.items()]
            heapq.heapify(heap)
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _after_change(self, conn: Connection) -> None:
        if self._owner:
            self._settle_passive(conn)
        lot = self._waiters.get(conn.conn_id)
        if lot is not None:
            state = conn.state
            lot.wake(
                everyone=state is ST_TIME_WAIT or state is ST_CLOSED or conn.error is not None
            )
            if not lot:
                # Nobody left waiting (the connect that waited for ESTABLISHED, a reader that
                # got its data): drop the lot rather than keep it, and its objects for the
                # garbage collector, for the connection's life. A task that waits later gets a
                # new one from wait_changed.
                del self._waiters[conn.conn_id]
        if conn.state is ST_CLOSED:
            self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        key = self._key(conn)
        if self._conns.get(key) is conn:
            del self._conns[key]
        lot = self._waiters.pop(conn.conn_id, None)
        if lot is not None:
            lot.wake(everyone=True)
        listener = self._owner.pop(conn.conn_id, None)
        if listener is not None:
            listener.half_open.discard(key)
        self._scheduled.pop(conn.conn_id, None)

    def _send(self, packets: list[bytes]) -> None:
        if packets:
            self.stats.packets_out += len(packets)
            try:
                self.link.send_batch(packets)
            except trio.ClosedResourceError:
                pass

    async def _shutdown(self, grace: float) -> None:
        """Close every connection gracefully, wait up to ``grace`` seconds, abort the rest.

        TIME-WAIT connections are simply forgotten: their side is done, and a RST from them would
        only disturb a peer that has closed as well.
        """
        self._closing = True
        for listener in list(self._listeners.values()):
            self.unlisten(listener)
        for conn in list(self._conns.values()):
            conn.close()
            self._mark(conn)
        self.flush()

        def unfinished() -> list[Connection]:
            return [
                c for c in self._conns.values()
                if c.state not in (ST_CLOSED, ST_TIME_WAIT)
            ]

        with trio.move_on_after(grace):
            while pending := unfinished():
                await self.wait_changed(pending[0])
        for conn in list(self._conns.values()):
            if conn.state is ST_TIME_WAIT:
                self._forget(conn)
            elif conn.state is not ST_CLOSED:
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
