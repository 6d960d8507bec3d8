"""What a stack reports about itself: every connection, and activity accounting.

:class:`ObserveMixin` is part of :class:`tcpstack.stack.StackCore`. It holds the query calls
(:meth:`~ObserveMixin.connections`, what ``ss -ti`` shows for kernel sockets;
:meth:`~ObserveMixin.activity` and :attr:`~ObserveMixin.activity_enabled`) and the metered twins
of the bottom half's two hot paths, which the stack takes instead of them while accounting is on
(:mod:`tcpstack.activity`), so the paths that run with accounting off carry no timing calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
import trio

from tcpstack.activity import Activity, ActivityMeter, ActivityReport
from tcpstack.tcp import Connection
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import TcpState
from tcpstack.wire import build_packet
from tcpstack.wire.segment import IcmpMessage, TcpSegment

if TYPE_CHECKING:
    from tcpstack.listeners import ConnKey

__all__ = ["ConnectionEntry", "ObserveMixin"]


@attrs.frozen(slots=True)
class ConnectionEntry:
    """One row of :meth:`StackCore.connections`: what ``ss -ti`` prints for a kernel socket."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: TcpState
    info: TCPInfo


class ObserveMixin:
    """Connections, activity accounting and the metered hot paths of
    :class:`tcpstack.stack.StackCore`."""

    if TYPE_CHECKING:
        address: str
        meter: ActivityMeter
        _conns: dict[ConnKey, Connection]
        _checksum: bool

        def _parse(self, packet: bytes) -> TcpSegment | IcmpMessage | None: ...
        def _dispatch_guarded(self, seg: TcpSegment | IcmpMessage, now: float) -> None: ...
        def _output_failed(self, conn: Connection, now: float) -> list[bytes]: ...
        def _schedule(self, conn: Connection) -> None: ...
        def _after_change(self, conn: Connection) -> None: ...
        def _send(self, packets: list[bytes]) -> None: ...

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

    @property
    def activity_enabled(self) -> bool:
        """Whether activity accounting runs (see :mod:`tcpstack.activity`)."""
        return self.meter.enabled

    @activity_enabled.setter
    def activity_enabled(self, on: bool) -> None:
        if on and not self.meter.enabled:
            self.meter.reset()
        self.meter.enabled = bool(on)

    def activity(self) -> ActivityReport:
        """Seconds and counts per activity since accounting was enabled."""
        return self.meter.report()

    def _input_accounted(self, batch: list[bytes], now: float) -> None:
        meter = self.meter
        t0 = time.perf_counter_ns()
        segs = [self._parse(packet) for packet in batch]
        t1 = time.perf_counter_ns()
        for seg in segs:
            if seg is not None:
                self._dispatch_guarded(seg, now)
        t2 = time.perf_counter_ns()
        meter.add(Activity.RX_PARSE, t1 - t0, len(batch))
        meter.add(Activity.TCP_INPUT, t2 - t1, len(segs))

    def _flush_accounted(self, dirty: dict[int, Connection], now: float) -> None:
        meter = self.meter
        t0 = time.perf_counter_ns()
        polled: list[tuple[Connection, list[TcpSegment]]] = []
        packets: list[bytes] = []
        for conn in dirty.values():
            try:
                polled.append((conn, conn.poll_transmit(now)))
            except Exception:
                packets += self._output_failed(conn, now)
            self._schedule(conn)
            self._after_change(conn)
        t1 = time.perf_counter_ns()
        checksum = self._checksum
        nsegs = 0
        for conn, segs in polled:
            nsegs += len(segs)
            try:
                packets += [build_packet(seg, checksum=checksum) for seg in segs]
            except Exception:
                packets += self._output_failed(conn, now)
                self._after_change(conn)
        t2 = time.perf_counter_ns()
        self._send(packets)
        t3 = time.perf_counter_ns()
        meter.add(Activity.TCP_OUTPUT, t1 - t0, nsegs)
        meter.add(Activity.BUILD, t2 - t1, len(packets))
        if packets:
            meter.add(Activity.LINK_SEND, t3 - t2, len(packets))
