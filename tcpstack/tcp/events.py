"""Typed events a connection reports: state changes, retransmissions, recovery, resets, timeouts.

The engine appends them as they happen; the stack hands them to the application and the overlay
(which weights routes by them). Every event is a frozen value carrying ``time`` (the engine's
``now``, seconds) and ``conn_id``; fields come after those two, in the order listed.
Sequence numbers are wire (absolute, 32-bit) values; cwnd and ssthresh are bytes.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

from tcpstack.tcp.state import TcpState

__all__ = [
    "RetransmitKind",
    "Event",
    "StateChanged",
    "SegmentRetransmitted",
    "RtoFired",
    "RecoveryEntered",
    "RecoveryExited",
    "LossDetected",
    "LossProbeSent",
    "UndoneReduction",
    "ZeroWindowSeen",
    "ZeroWindowCleared",
    "ResetReceived",
    "ResetSent",
    "KeepaliveTimeout",
    "UserTimeout",
    "ChallengeAckSent",
    "IcmpReceived",
    "EVENT_TYPES",
]


class RetransmitKind(enum.Enum):
    """Why a segment went out again."""

    FAST = "fast"  # fast retransmit on the dupack threshold (RFC 5681 3.2)
    RTO = "rto"  # retransmission timeout (RFC 6298 5.4)
    PROBE = "probe"  # tail loss probe or zero-window probe
    SACK_RECOVERY = "sack-recovery"  # a hole filled during SACK-based recovery (RFC 6675)


def _json_value(_inst: object, _field: attrs.Attribute[Any] | None, value: Any) -> Any:
    if isinstance(value, TcpState):
        return value.name
    if isinstance(value, enum.Enum):
        return value.value
    return value


@attrs.frozen(slots=True)
class Event:
    """Base of all connection events."""

    time: float
    conn_id: int

    event_type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"event": ..., "time": ..., "conn_id": ..., <fields>}``; states
        by name, other enums by value."""
        return {"event": self.event_type, **attrs.asdict(self, value_serializer=_json_value)}


@attrs.frozen(slots=True)
class StateChanged(Event):
    old: TcpState
    new: TcpState

    event_type: ClassVar[str] = "state-changed"


@attrs.frozen(slots=True)
class SegmentRetransmitted(Event):
    """Sequence space ``[start, end)`` was sent again."""

    kind: RetransmitKind
    start: int
    end: int

    event_type: ClassVar[str] = "segment-retransmitted"


@attrs.frozen(slots=True)
class RtoFired(Event):
    """The retransmission timer expired; ``backoff`` is the count of consecutive expiries (Linux
    ``icsk_backoff`` after this one) and ``rto`` the new, backed-off timeout in seconds."""

    backoff: int
    rto: float

    event_type: ClassVar[str] = "rto-fired"


@attrs.frozen(slots=True)
class RecoveryEntered(Event):
    """Fast recovery began; ``reason`` is "dupacks", "sack" or "ecn"."""

    cwnd: int
    ssthresh: int
    reason: str

    event_type: ClassVar[str] = "recovery-entered"


@attrs.frozen(slots=True)
class RecoveryExited(Event):
    cwnd: int
    ssthresh: int

    event_type: ClassVar[str] = "recovery-exited"


@attrs.frozen(slots=True)
class LossDetected(Event):
    """``segments`` were marked lost in one window; ``burst`` when more than one was."""

    segments: int
    burst: bool

    event_type: ClassVar[str] = "loss-detected"


@attrs.frozen(slots=True)
class LossProbeSent(Event):
    """An RFC 8985 tail loss probe covering ``[start, end)`` left: new data, or (``retransmission``)
    the last segment again, which is also reported as ``SegmentRetransmitted(kind=PROBE)``."""

    start: int
    end: int
    retransmission: bool

    event_type: ClassVar[str] = "loss-probe-sent"


@attrs.frozen(slots=True)
class UndoneReduction(Event):
    """A cwnd reduction proved spurious and was undone (``reason``: ``dsack`` when D-SACKs
    showed every retransmission of the episode was unnecessary, RFC 3708 / Linux
    tcp_try_undo_dsack); ``cwnd`` and ``ssthresh`` in bytes after the undo."""

    cwnd: int
    ssthresh: int
    reason: str

    event_type: ClassVar[str] = "reduction-undone"


@attrs.frozen(slots=True)
class ZeroWindowSeen(Event):
    """The peer advertised a zero receive window while we had data to send."""

    event_type: ClassVar[str] = "zero-window-seen"


@attrs.frozen(slots=True)
class ZeroWindowCleared(Event):
    event_type: ClassVar[str] = "zero-window-cleared"


@attrs.frozen(slots=True)
class ResetReceived(Event):
    reason: str

    event_type: ClassVar[str] = "reset-received"


@attrs.frozen(slots=True)
class ResetSent(Event):
    reason: str

    event_type: ClassVar[str] = "reset-sent"


@attrs.frozen(slots=True)
class KeepaliveTimeout(Event):
    """The connection was aborted after ``probes`` unanswered keep-alive probes."""

    probes: int

    event_type: ClassVar[str] = "keepalive-timeout"


@attrs.frozen(slots=True)
class UserTimeout(Event):
    """Data stayed unacknowledged longer than the RFC 5482 user timeout (seconds)."""

    timeout: float

    event_type: ClassVar[str] = "user-timeout"


@attrs.frozen(slots=True)
class ChallengeAckSent(Event):
    """An RFC 5961 challenge ACK went out; ``reason`` is "rst", "syn" or "ack"."""

    reason: str

    event_type: ClassVar[str] = "challenge-ack-sent"


@attrs.frozen(slots=True)
class IcmpReceived(Event):
    """An ICMP error quoting this connection arrived (RFC 5927 checks are the stack's)."""

    type: int
    code: int
    next_hop_mtu: int | None = None

    event_type: ClassVar[str] = "icmp-received"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        StateChanged,
        SegmentRetransmitted,
        RtoFired,
        RecoveryEntered,
        RecoveryExited,
        LossDetected,
        LossProbeSent,
        UndoneReduction,
        ZeroWindowSeen,
        ZeroWindowCleared,
        ResetReceived,
        ResetSent,
        KeepaliveTimeout,
        UserTimeout,
        ChallengeAckSent,
        IcmpReceived,
    )
}
