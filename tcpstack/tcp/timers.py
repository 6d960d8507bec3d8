"""The connection's timers as named deadlines.

A sans-IO connection has no timer objects: each timer is an absolute deadline (seconds, the same
clock as the ``now`` the stack passes in) or ``None``. The stack asks for the earliest one and
calls ``Connection.on_timer(now)`` when it is reached; calling early is harmless because only due
deadlines fire.
"""

from __future__ import annotations

import enum

__all__ = ["TimerKind", "Timers", "TK_RETRANSMIT", "TK_DELACK", "TK_PERSIST", "TK_KEEPALIVE", "TK_TIME_WAIT", "TK_LOSS_PROBE", "TK_REO_TIMEOUT"]


class TimerKind(enum.IntEnum):
    """The timers of one connection (Linux names in brackets)."""

    RETRANSMIT = 0  # RFC 6298 RTO, also the SYN / SYN-ACK retransmission timer (ICSK_TIME_RETRANS)
    DELACK = 1  # delayed ACK (ICSK_TIME_DACK), RFC 1122 4.2.3.2 / RFC 9293 3.8.6.3
    PERSIST = 2  # zero-window probe (ICSK_TIME_PROBE0), RFC 9293 3.8.6.1
    KEEPALIVE = 3  # RFC 1122 4.2.3.6 (also Linux's FIN_WAIT_2 timeout for orphaned sockets)
    TIME_WAIT = 4  # 2*MSL, RFC 9293 3.6
    LOSS_PROBE = 5  # RFC 8985 tail loss probe, PTO (ICSK_TIME_LOSS_PROBE)
    REO_TIMEOUT = 6  # RFC 8985 RACK reordering timer (ICSK_TIME_REO_TIMEOUT)


# The members as plain module globals, for per-segment code (see tcpstack.tcp.state).
TK_RETRANSMIT = TimerKind.RETRANSMIT
TK_DELACK = TimerKind.DELACK
TK_PERSIST = TimerKind.PERSIST
TK_KEEPALIVE = TimerKind.KEEPALIVE
TK_TIME_WAIT = TimerKind.TIME_WAIT
TK_LOSS_PROBE = TimerKind.LOSS_PROBE
TK_REO_TIMEOUT = TimerKind.REO_TIMEOUT

_KINDS = tuple(TimerKind)
# The deadline list of every Timers with none set (an established idle connection, most of the
# time): shared, and never written, since set() gives the Timers its own list first. An idle
# connection then holds no list for the allocator to make and the garbage collector to walk.
_NONE_SET: list[float | None] = [None] * len(_KINDS)


class Timers:
    """A fixed set of optional deadlines; the earliest is cached so ``earliest()`` is O(1)."""

    __slots__ = ("_deadlines", "_earliest")

    def __init__(self) -> None:
        self._deadlines: list[float | None] = _NONE_SET
        self._earliest: float | None = None

    def set(self, kind: TimerKind, when: float) -> None:
        deadlines = self._deadlines
        if deadlines is _NONE_SET:
            deadlines = self._deadlines = [None] * len(_KINDS)
        old = deadlines[kind]
        deadlines[kind] = when
        earliest = self._earliest
        if earliest is None or when <= earliest:
            self._earliest = when
        elif old == earliest:
            # Only moving the earliest deadline later can change the minimum: the per-ACK
            # re-arm of the RTO / PTO is this case, and the rest stays O(1).
            self._recompute()

    def cancel(self, kind: TimerKind) -> None:
        deadlines = self._deadlines
        old = deadlines[kind]
        if old is not None:
            deadlines[kind] = None
            if old == self._earliest:
                self._recompute()

    def cancel_all(self) -> None:
        self._deadlines = _NONE_SET
        self._earliest = None

    def get(self, kind: TimerKind) -> float | None:
        return self._deadlines[kind]

    def is_set(self, kind: TimerKind) -> bool:
        return self._deadlines[kind] is not None

    def earliest(self) -> float | None:
        return self._earliest

    def pop_due(self, now: float) -> list[TimerKind]:
        """Clear and return the timers whose deadline is ``<= now``, in kind order."""
        if self._earliest is None or self._earliest > now:
            return []
        due = [k for k in _KINDS if (d := self._deadlines[k]) is not None and d <= now]
        for k in due:
            self._deadlines[k] = None
        self._recompute()
        return due

    def _recompute(self) -> None:
        earliest: float | None = None
        for d in self._deadlines:
            if d is not None and (earliest is None or d < earliest):
                earliest = d
        self._earliest = earliest
        if earliest is None:
            self._deadlines = _NONE_SET  # all cancelled or fired: let the list go

    def __repr__(self) -> str:
        items = ", ".join(
            f"{k.name}={d:.6f}" for k in _KINDS if (d := self._deadlines[k]) is not None
        )
        return f"Timers({items})"
