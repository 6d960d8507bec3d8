"""Connection states and the Linux codes that ``TCPInfo`` reports for them.

``TcpState`` is RFC 9293's state machine (section 3.3.2). Linux numbers the same states
differently (``include/net/tcp_states.h``) and ``struct tcp_info`` carries that number, so each
state knows its Linux code. ``CaState`` is Linux's congestion-avoidance state machine
(``enum tcp_ca_state``), and ``TcpiOption`` the ``tcpi_options`` bits (``TCPI_OPT_*``).
"""

from __future__ import annotations

import enum

__all__ = [
    "TcpState",
    "CaState",
    "TcpiOption",
    "ST_CLOSED",
    "ST_LISTEN",
    "ST_SYN_SENT",
    "ST_SYN_RECEIVED",
    "ST_ESTABLISHED",
    "ST_FIN_WAIT_1",
    "ST_FIN_WAIT_2",
    "ST_CLOSE_WAIT",
    "ST_CLOSING",
    "ST_LAST_ACK",
    "ST_TIME_WAIT",
    "CA_OPEN",
    "CA_DISORDER",
    "CA_CWR",
    "CA_RECOVERY",
    "CA_LOSS",
]


class TcpState(enum.Enum):
    """The eleven states of RFC 9293 section 3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    @property
    def linux_code(self) -> int:
        """The ``TCP_*`` number of include/net/tcp_states.h (``tcpi_state``, ``ss`` output)."""
        return _LINUX_CODES[self]

    @classmethod
    def from_linux_code(cls, code: int) -> TcpState:
        """The state whose Linux number is ``code``; ``ValueError`` for numbers Linux's
        ``tcp_info`` would not report for an RFC state (TCP_NEW_SYN_RECV 12, TCP_BOUND_INACTIVE 13)."""
        try:
            return _FROM_LINUX[code]
        except KeyError:
            raise ValueError(f"no RFC 9293 state has Linux code {code!r}") from None

    @property
    def synchronized(self) -> bool:
        """True in the synchronized states (RFC 9293 section 3.5.2 / 3.10.7.4): ESTABLISHED and
        every state after it, where an unacceptable segment draws an ACK rather than a RST."""
        return self in _SYNCHRONIZED

    def __str__(self) -> str:
        return self.value

    # Members are singletons compared by identity, so the identity hash is consistent with
    # equality; Enum's own __hash__ (hash of the name) is a Python-level call, and states are
    # looked up in sets several times per segment.
    __hash__ = object.__hash__


_LINUX_CODES: dict[TcpState, int] = {
    TcpState.ESTABLISHED: 1,
    TcpState.SYN_SENT: 2,
    TcpState.SYN_RECEIVED: 3,
    TcpState.FIN_WAIT_1: 4,
    TcpState.FIN_WAIT_2: 5,
    TcpState.TIME_WAIT: 6,
    TcpState.CLOSED: 7,
    TcpState.CLOSE_WAIT: 8,
    TcpState.LAST_ACK: 9,
    TcpState.LISTEN: 10,
    TcpState.CLOSING: 11,
}
_FROM_LINUX: dict[int, TcpState] = {code: state for state, code in _LINUX_CODES.items()}

_SYNCHRONIZED = frozenset(
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


# The members as plain module globals, for per-segment code: on CPython 3.11 ``TcpState.X`` (any
# Enum class attribute) goes through EnumType.__getattr__'s slow lookup hook, ~10x a global load.
ST_CLOSED = TcpState.CLOSED
ST_LISTEN = TcpState.LISTEN
ST_SYN_SENT = TcpState.SYN_SENT
ST_SYN_RECEIVED = TcpState.SYN_RECEIVED
ST_ESTABLISHED = TcpState.ESTABLISHED
ST_FIN_WAIT_1 = TcpState.FIN_WAIT_1
ST_FIN_WAIT_2 = TcpState.FIN_WAIT_2
ST_CLOSE_WAIT = TcpState.CLOSE_WAIT
ST_CLOSING = TcpState.CLOSING
ST_LAST_ACK = TcpState.LAST_ACK
ST_TIME_WAIT = TcpState.TIME_WAIT

class CaState(enum.IntEnum):
    """Linux ``enum tcp_ca_state`` (include/net/tcp.h), reported as ``tcpi_ca_state``.

    OPEN: normal; DISORDER: dupacks or SACKs seen, no loss inferred yet; CWR: cwnd reduced for an
    ECN echo or local congestion; RECOVERY: fast recovery (RFC 6582 / RFC 6675); LOSS: after an RTO.
    """

    OPEN = 0
    DISORDER = 1
    CWR = 2
    RECOVERY = 3
    LOSS = 4


# As for TcpState above: the members as plain module globals.
CA_OPEN = CaState.OPEN
CA_DISORDER = CaState.DISORDER
CA_CWR = CaState.CWR
CA_RECOVERY = CaState.RECOVERY
CA_LOSS = CaState.LOSS

class TcpiOption(enum.IntFlag):
    """The ``tcpi_options`` bits (``TCPI_OPT_*`` in include/uapi/linux/tcp.h)."""

    TIMESTAMPS = 1
    SACK = 2
    WSCALE = 4
    ECN = 8  # ECN was negotiated at SYN/SYN-ACK
    ECN_SEEN = 16  # at least one ECT packet received
    SYN_DATA = 32  # SYN-ACK acked data in the SYN (TCP Fast Open)
    USEC_TS = 64  # timestamps count microseconds (Linux 6.7)
    TFO_CHILD = 128  # passive side of a Fast Open connection (Linux 6.9)
