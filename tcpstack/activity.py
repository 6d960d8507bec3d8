"""Activity-based accounting: where a stack's CPU time goes, by what it was doing.

A profiler attributes time to functions; this attributes it to the stack's activities (the
seed's "overheads by activity rather than by function"): parsing received packets, TCP input
processing, TCP output (deciding what to send), building packets with their checksums, handing
packets to the link, copying to and from the application, and timer processing.

The stack brackets *batch-level* work with :func:`time.perf_counter_ns` (one pair of clock reads
per received batch, per flush, per application call), never per byte, so that accounting costs
a few hundred nanoseconds per batch. It is off by default; when off, the only cost is one
attribute test per batch.
"""

from __future__ import annotations

import enum
import time

import attrs

__all__ = ["Activity", "ActivityTotals", "ActivityReport", "ActivityMeter"]


class Activity(enum.Enum):
    """What the stack was doing."""

    RX_PARSE = "rx parse"  # IPv4/TCP decode (and checksum verification) of received packets
    TCP_INPUT = "tcp input"  # demultiplexing, Connection.on_segment / on_icmp
    TCP_OUTPUT = "tcp output"  # Connection.poll_transmit: what to send now
    BUILD = "build/checksum"  # wire encoding and checksums of what is sent
    LINK_SEND = "link send"  # handing a batch to the link
    COPY_TO_APP = "copy to app"  # receive_some: receive buffer -> application
    COPY_FROM_APP = "copy from app"  # send_all: application -> send buffer
    TIMERS = "timers"  # Connection.on_timer for due deadlines

    @property
    def unit(self) -> str:
        """What ``ActivityTotals.count`` counts for this activity."""
        return _UNITS[self]

    @property
    def label(self) -> str:
        return str(self.value)


_UNITS = {
    Activity.RX_PARSE: "packets",
    Activity.TCP_INPUT: "segments",
    Activity.TCP_OUTPUT: "segments",
    Activity.BUILD: "packets",
    Activity.LINK_SEND: "packets",
    Activity.COPY_TO_APP: "bytes",
    Activity.COPY_FROM_APP: "bytes",
    Activity.TIMERS: "timers",
}


@attrs.frozen(slots=True)
class ActivityTotals:
    """Accumulated cost of one activity: ``seconds`` of CPU (wall) time, ``calls`` brackets
    timed, and ``count`` items handled (in the activity's unit)."""

    activity: Activity
    seconds: float
    calls: int
    count: int

    @property
    def us_per_item(self) -> float:
        return self.seconds * 1e6 / self.count if self.count else 0.0


@attrs.frozen(slots=True)
class ActivityReport:
    """A snapshot of :meth:`tcpstack.api.Stack.activity`."""

    enabled: bool
    elapsed: float  # wall seconds since accounting was (last) enabled or reset
    totals: tuple[ActivityTotals, ...]

    def __getitem__(self, activity: Activity) -> ActivityTotals:
        for row in self.totals:
            if row.activity is activity:
                return row
        raise KeyError(activity)

    @property
    def accounted(self) -> float:
        """Seconds attributed to some activity."""
        return sum(row.seconds for row in self.totals)

    def format_table(self) -> str:
        """A plain-text table, one activity per line, with its share of the elapsed time."""
        lines = [f"{'activity':<15} {'seconds':>9} {'share':>6} {'count':>11} {'unit':<8} {'us/item':>8}"]
        for row in self.totals:
            share = row.seconds / self.elapsed if self.elapsed > 0 else 0.0
            lines.append(
                f"{row.activity.label:<15} {row.seconds:>9.4f} {share:>6.1%} {row.count:>11} "
                f"{row.activity.unit:<8} {row.us_per_item:>8.2f}"
            )
        lines.append(
            f"{'accounted':<15} {self.accounted:>9.4f} "
            f"{(self.accounted / self.elapsed if self.elapsed > 0 else 0.0):>6.1%} "
            f"of {self.elapsed:.3f} s wall"
        )
        return "\n".join(lines)


class ActivityMeter:
    """The counters a stack updates. ``enabled`` is read by the stack before each bracket."""

    __slots__ = ("enabled", "_ns", "_calls", "_count", "_since")

    def __init__(self, enabled: bool = False) -> None:
        n = len(Activity)
        self._ns = [0] * n
        self._calls = [0] * n
        self._count = [0] * n
        self._since = time.perf_counter_ns()
        self.enabled = enabled

    def add(self, activity: Activity, elapsed_ns: int, count: int) -> None:
        i = _INDEX[activity]
        self._ns[i] += elapsed_ns
        self._calls[i] += 1
        self._count[i] += count

    def reset(self) -> None:
        n = len(Activity)
        self._ns = [0] * n
        self._calls = [0] * n
        self._count = [0] * n
        self._since = time.perf_counter_ns()

    def report(self) -> ActivityReport:
        return ActivityReport(
            enabled=self.enabled,
            elapsed=(time.perf_counter_ns() - self._since) / 1e9,
            totals=tuple(
                ActivityTotals(a, self._ns[i] / 1e9, self._calls[i], self._count[i])
                for a, i in _INDEX.items()
            ),
        )


_INDEX = {activity: i for i, activity in enumerate(Activity)}
