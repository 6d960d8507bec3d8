"""Listening ports of the stack: bounded SYN and accept queues, SYN cookies, passive opens.

A listener keeps at most ``backlog`` half-open connections (SYN-RECEIVED) and ``backlog``
established ones waiting for ``accept``. When the SYN queue is full the stack answers with SYN
cookies (:class:`tcpstack.isn.SynCookies`), as Linux does with ``net.ipv4.tcp_syncookies = 1``;
when the accept queue is full, SYNs and handshake-completing ACKs are dropped (Linux
``ListenOverflows``) and the peer's retransmissions may find room later.

:class:`ListenerMixin` is part of :class:`tcpstack.stack.StackCore`; it is kept here so the runtime
module stays about the runtime.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.state import ST_CLOSE_WAIT, ST_ESTABLISHED, ST_SYN_RECEIVED
from tcpstack.wire import build_packet
from tcpstack.wire.segment import TcpFlags, TcpSegment

if TYPE_CHECKING:
    import itertools

    from tcpstack.isn import IsnGenerator, SynCookies
    from tcpstack.stack import StackStats


__all__ = ["ConnKey", "ListenState", "ListenerMixin", "COOKIE_WINDOW"]

# Key of a connection in the demultiplexing table: (local port, remote address, remote port).
# The local address is the stack's own.
ConnKey = tuple[int, str, int]

COOKIE_WINDOW = 120.0  # s after a SYN queue overflow during which cookie ACKs are checked (Linux)
_SYN, _ACK, _RST = TcpFlags.SYN, TcpFlags.ACK, TcpFlags.RST


class ListenState:
    """A listening port: bounded SYN queue (half-open) and accept queue (established)."""

    def __init__(self, port: int, backlog: int, options: ConnectionOptions) -> None:
        self.port = port
        self.backlog = backlog
        self.options = options
        self.half_open: set[ConnKey] = set()
        self.accept_queue: deque[Connection] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.closed = False
        self.last_overflow = -float("inf")


class ListenerMixin:
    """Passive opens for :class:`tcpstack.stack.StackCore`."""

    if TYPE_CHECKING:
        address: str
        stats: StackStats
        syncookies: int
        _checksum: bool
        _isn: IsnGenerator
        _cookies: SynCookies
        _ids: itertools.count[int]
        _owner: dict[int, ListenState]

        def _add(self, conn: Connection, key: ConnKey) -> None: ...
        def _mark(self, conn: Connection) -> None: ...
        def _send(self, packets: list[bytes]) -> None: ...
        @staticmethod
        def _key(conn: Connection) -> ConnKey: ...

    def _accept_queue_full(self, conn: Connection, seg: TcpSegment) -> bool:
        listener = self._owner.get(conn.conn_id)
        return (
            listener is not None
            and int(seg.flags) & 0x16 == 0x10  # ACK without SYN or RST (ints: IntFlag ops are slow)
            and len(listener.accept_queue) >= listener.backlog
        )

    def _listen_syn(self, listener: ListenState, syn: TcpSegment, key: ConnKey, now: float) -> None:
        if len(listener.accept_queue) >= listener.backlog:
            # Linux tcp_conn_request: with the accept queue full even a cookie would not help.
            self.stats.accept_queue_overflows += 1
            return
        if self.syncookies == 2 or len(listener.half_open) >= listener.backlog:
            self.stats.syn_queue_overflows += 1
            listener.last_overflow = now
            if self.syncookies:
                self._send_cookie(listener, syn, now)
            return  # without cookies the SYN is dropped; the peer retransmits it
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

    def _send_cookie(self, listener: ListenState, syn: TcpSegment, now: float) -> None:
        """Answer ``syn`` with a SYN-ACK whose ISN is a cookie, keeping no state."""
        checksum = self._checksum
        segments = self._cookies.syn_ack(syn, listener.options, now)
        self.stats.syncookies_sent += 1
        self._send([build_packet(seg, checksum=checksum) for seg in segments])

    def _cookie_ack(self, listener: ListenState, ack: TcpSegment, key: ConnKey, now: float) -> bool:
        """Rebuild a connection from a valid cookie ACK; False if ``ack`` carries no valid cookie
        (the caller then answers with a RST, as for any closed port)."""
        index = self._cookies.validate(ack, now)
        if index is None:
            return False
        if len(listener.accept_queue) >= listener.backlog:
            self.stats.accept_queue_overflows += 1
            return True  # dropped, as Linux does; the peer's retransmission may find room
        conn = self._cookies.rebuild(ack, index, listener.options, now, next(self._ids))
        if conn is None:
            return False
        self.stats.syncookies_recv += 1
        self._add(conn, key)
        self._owner[conn.conn_id] = listener
        self._settle_passive(conn)
        self._mark(conn)
        return True

    def _settle_passive(self, conn: Connection) -> None:
        """A passive connection that left SYN-RECEIVED: into the accept queue, or gone."""
        listener = self._owner.get(conn.conn_id)
        state = conn.state
        if listener is None or state is ST_SYN_RECEIVED:
            return
        listener.half_open.discard(self._key(conn))
        del self._owner[conn.conn_id]
        if state in (ST_ESTABLISHED, ST_CLOSE_WAIT) and not listener.closed:
            if len(listener.accept_queue) < listener.backlog:
                listener.accept_queue.append(conn)
                # One waiter per queued connection: waking them all would cost every other
                # acceptor a trio wake-up (~40 us) only to find the queue empty again.
                listener.lot.unpark()
            else:
                self.stats.accept_queue_overflows += 1
                conn.abort()
                self._mark(conn)

