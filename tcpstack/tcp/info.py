"""``TCPInfo``: every TCP state variable of one connection, as Linux's ``struct tcp_info``.

Field names are those of include/uapi/linux/tcp.h without the ``tcpi_`` prefix, in Linux's units:

* microseconds: ``rto``, ``ato``, ``rtt``, ``rttvar``, ``min_rtt``, ``rcv_rtt``, ``busy_time``,
  ``rwnd_limited``, ``sndbuf_limited``;
* milliseconds: ``last_data_sent``, ``last_ack_sent``, ``last_data_recv``, ``last_ack_recv``
  (time since the event), ``total_rto_time``;
* segments: ``snd_cwnd``, ``snd_ssthresh``, ``unacked``, ``sacked``, ``lost``, ``retrans``,
  ``fackets``, ``reordering``, ``delivered``, ``delivered_ce``, ``segs_*``, ``data_segs_*``;
* bytes: ``snd_mss``, ``rcv_mss``, ``advmss``, ``pmtu``, ``rcv_ssthresh``, ``rcv_space``,
  ``notsent_bytes``, ``bytes_*``, ``snd_wnd``, ``rcv_wnd`` and the AccECN byte counters;
* bytes per second: ``pacing_rate``, ``max_pacing_rate``, ``delivery_rate``.

:meth:`TCPInfo.pack` writes the exact binary layout gcc gives the struct on x86_64 (Linux 6.18:
280 bytes); :meth:`TCPInfo.unpack` reads it back, and also the shorter prefix an older kernel
returns from ``getsockopt(IPPROTO_TCP, TCP_INFO)`` (fields it does not cover read as zero), so a
kernel socket's numbers and the user-level stack's can be compared field by field.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import attrs

from tcpstack.tcp.state import CaState, TcpiOption, TcpState

__all__ = ["TCPInfo", "FIELD_LAYOUT", "TCP_INFO_SIZE"]

# (name, struct code) in declaration order. Bytes 6 and 7 hold bitfields; gcc on little-endian
# allocates bitfields from the least significant bit, so ``snd_wscale:4`` is the low nibble of
# byte 6 and ``rcv_wscale:4`` the high one; ``delivery_rate_app_limited:1`` is bit 0 of byte 7
# and ``fastopen_client_fail:2`` bits 1-2. They are listed here as the bytes that carry them.
_MEMBERS: tuple[tuple[str, str], ...] = (
    ("state", "B"),
    ("ca_state", "B"),
    ("retransmits", "B"),
    ("probes", "B"),
    ("backoff", "B"),
    ("options", "B"),
    ("_wscale_bits", "B"),
    ("_app_limited_bits", "B"),
    ("rto", "I"),
    ("ato", "I"),
    ("snd_mss", "I"),
    ("rcv_mss", "I"),
    ("unacked", "I"),
    ("sacked", "I"),
    ("lost", "I"),
    ("retrans", "I"),
    ("fackets", "I"),
    ("last_data_sent", "I"),
    ("last_ack_sent", "I"),
    ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"),
    ("rcv_ssthresh", "I"),
    ("rtt", "I"),
    ("rttvar", "I"),
    ("snd_ssthresh", "I"),
    ("snd_cwnd", "I"),
    ("advmss", "I"),
    ("reordering", "I"),
    ("rcv_rtt", "I"),
    ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"),
    ("max_pacing_rate", "Q"),
    ("bytes_acked", "Q"),  # RFC 4898 tcpEStatsAppHCThruOctetsAcked
    ("bytes_received", "Q"),  # RFC 4898 tcpEStatsAppHCThruOctetsReceived
    ("segs_out", "I"),
    ("segs_in", "I"),
    ("notsent_bytes", "I"),
    ("min_rtt", "I"),
    ("data_segs_in", "I"),
    ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"),
    ("rwnd_limited", "Q"),
    ("sndbuf_limited", "Q"),
    ("delivered", "I"),
    ("delivered_ce", "I"),
    ("bytes_sent", "Q"),
    ("bytes_retrans", "Q"),
    ("dsack_dups", "I"),
    ("reord_seen", "I"),
    ("rcv_ooopack", "I"),  # Linux 5.4; the struct ends after snd_wnd in 5.4 .. 6.1
    ("snd_wnd", "I"),
    ("rcv_wnd", "I"),  # Linux 6.2
    ("rehash", "I"),
    ("total_rto", "H"),  # Linux 6.7
    ("total_rto_recoveries", "H"),
    ("total_rto_time", "I"),
    ("received_ce", "I"),  # Linux 6.18: Accurate ECN counters
    ("delivered_e1_bytes", "I"),
    ("delivered_e0_bytes", "I"),
    ("delivered_ce_bytes", "I"),
    ("received_e1_bytes", "I"),
    ("received_e0_bytes", "I"),
    ("received_ce_bytes", "I"),
    ("accecn_fail_mode", "H"),
    ("accecn_opt_seen", "H"),
)


def _layout() -> tuple[tuple[tuple[str, int, int], ...], str, int]:
    """Offsets with natural alignment, as gcc lays the struct out on x86_64."""
    layout: list[tuple[str, int, int]] = []
    fmt = ["<"]
    offset = 0
    max_align = 1
    for name, code in _MEMBERS:
        size = struct.calcsize("<" + code)
        pad = -offset % size
        if pad:
            fmt.append(f"{pad}x")
            offset += pad
        layout.append((name, offset, size))
        fmt.append(code)
        offset += size
        max_align = max(max_align, size)
    tail = -offset % max_align
    if tail:
        fmt.append(f"{tail}x")
        offset += tail
    return tuple(layout), "".join(fmt), offset


#: ``(member, offset, size)`` of every C member, bitfield bytes named ``_wscale_bits`` and
#: ``_app_limited_bits``.
FIELD_LAYOUT, _FORMAT, _SIZE = _layout()
_STRUCT = struct.Struct(_FORMAT)
TCP_INFO_SIZE = _SIZE
_OFFSETS = {name: offset for name, offset, _ in FIELD_LAYOUT}
_ENDS = sorted({offset + size for _, offset, size in FIELD_LAYOUT})
_BITFIELD_BYTE = {
    "snd_wscale": "_wscale_bits",
    "rcv_wscale": "_wscale_bits",
    "delivery_rate_app_limited": "_app_limited_bits",
    "fastopen_client_fail": "_app_limited_bits",
}

_U = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


@attrs.frozen(slots=True, kw_only=True)
class TCPInfo:
    """One snapshot of a connection's state, field for field ``struct tcp_info``.

    Every field is required: a forgotten one is an error, not a silent zero. ``congestion`` (the
    algorithm's name, Linux's ``TCP_CONGESTION``) is carried beside the struct and not packed.
    """

    #: ``sizeof(struct tcp_info)`` in Linux 6.18 (6.1's header ends at snd_wnd, 232 bytes).
    SIZE: ClassVar[int] = _SIZE

    state: int  # Linux code of include/net/tcp_states.h, see TcpState.linux_code
    ca_state: int  # CaState
    retransmits: int  # RTO expiries for the segment at snd_una (icsk_retransmits)
    probes: int  # unanswered zero-window or keep-alive probes
    backoff: int  # RTO exponential backoff count
    options: int  # TcpiOption bits
    snd_wscale: int  # peer's window scale (we shift its windows by this)
    rcv_wscale: int  # our window scale
    delivery_rate_app_limited: bool
    fastopen_client_fail: int
    rto: int
    ato: int
    snd_mss: int
    rcv_mss: int
    unacked: int
    sacked: int
    lost: int
    retrans: int
    fackets: int
    last_data_sent: int
    last_ack_sent: int
    last_data_recv: int
    last_ack_recv: int
    pmtu: int
    rcv_ssthresh: int
    rtt: int  # smoothed RTT
    rttvar: int
    snd_ssthresh: int
    snd_cwnd: int
    advmss: int
    reordering: int
    rcv_rtt: int
    rcv_space: int
    total_retrans: int
    pacing_rate: int
    max_pacing_rate: int
    bytes_acked: int
    bytes_received: int
    segs_out: int
    segs_in: int
    notsent_bytes: int
    min_rtt: int
    data_segs_in: int
    data_segs_out: int
    delivery_rate: int
    busy_time: int
    rwnd_limited: int
    sndbuf_limited: int
    delivered: int
    delivered_ce: int
    bytes_sent: int
    bytes_retrans: int
    dsack_dups: int
    reord_seen: int
    rcv_ooopack: int
    snd_wnd: int
    rcv_wnd: int
    rehash: int
    total_rto: int
    total_rto_recoveries: int
    total_rto_time: int
    received_ce: int
    delivered_e1_bytes: int
    delivered_e0_bytes: int
    delivered_ce_bytes: int
    received_e1_bytes: int
    received_e0_bytes: int
    received_ce_bytes: int
    accecn_fail_mode: int
    accecn_opt_seen: int
    congestion: str

    # -- derived views -------------------------------------------------------------------------

    @property
    def tcp_state(self) -> TcpState:
        return TcpState.from_linux_code(self.state)

    @property
    def ca(self) -> CaState:
        return CaState(self.ca_state)

    @property
    def option_flags(self) -> TcpiOption:
        return TcpiOption(self.options)

    # -- construction helpers ------------------------------------------------------------------

    @classmethod
    def zeros(cls, **fields: Any) -> TCPInfo:
        """A snapshot with every field zero (``congestion`` empty) except those given; for tests
        and for building from a partial kernel answer."""
        values: dict[str, Any] = dict.fromkeys(_FIELD_NAMES, 0)
        values["delivery_rate_app_limited"] = False
        values["congestion"] = ""
        unknown = set(fields) - set(values)
        if unknown:
            raise TypeError(f"TCPInfo has no field(s) {', '.join(sorted(unknown))}")
        values.update(fields)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` with ints, a bool and a str: ready for JSON."""
        out: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            out[name] = bool(value) if name == "delivery_rate_app_limited" else int(value)
        out["congestion"] = self.congestion
        return out

    # -- binary form ---------------------------------------------------------------------------

    def pack(self) -> bytes:
        """The ``struct tcp_info`` bytes (x86_64, little-endian, :attr:`SIZE` long).

        Counters wrap to their C width as the kernel's do; a negative or non-integer value, or a
        bitfield out of its width, raises ``ValueError`` naming the field."""
        for name, bits in (("snd_wscale", 4), ("rcv_wscale", 4), ("fastopen_client_fail", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise ValueError(f"TCPInfo.{name} must fit in {bits} bits, got {value!r}")
        values: list[int] = []
        for name, _offset, size in FIELD_LAYOUT:
            if name == "_wscale_bits":
                values.append(self.snd_wscale | (self.rcv_wscale << 4))
            elif name == "_app_limited_bits":
                values.append(
                    (1 if self.delivery_rate_app_limited else 0) | (self.fastopen_client_fail << 1)
                )
            else:
                value = getattr(self, name)
                if not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"TCPInfo.{name} must be a non-negative int, got {value!r}"
                    )
                values.append(value & _U[size])
        return _STRUCT.pack(*values)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, *, congestion: str = "") -> TCPInfo:
        """Read ``struct tcp_info`` bytes. A shorter buffer (an older kernel's struct, or a caller
        that asked for fewer bytes) leaves the fields it does not wholly cover zero; bytes past
        :attr:`SIZE` (a newer kernel) are ignored."""
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise TypeError(f"TCPInfo.unpack needs bytes, got {type(buf).__name__}")
        data = bytes(buf[:_SIZE])
        covered = max((end for end in _ENDS if end <= len(data)), default=0)
        data = data[:covered] + bytes(_SIZE - covered)
        raw = dict(zip((name for name, _, _ in FIELD_LAYOUT), _STRUCT.unpack(data), strict=True))
        wscale = raw.pop("_wscale_bits")
        app = raw.pop("_app_limited_bits")
        return cls(
            snd_wscale=wscale & 0x0F,
            rcv_wscale=wscale >> 4,
            delivery_rate_app_limited=bool(app & 1),
            fastopen_client_fail=(app >> 1) & 0b11,
            congestion=congestion,
            **raw,
        )

    @staticmethod
    def offsetof(name: str) -> int:
        """Byte offset of field ``name`` (of the byte holding it, for a bitfield)."""
        try:
            return _OFFSETS[_BITFIELD_BYTE.get(name, name)]
        except KeyError:
            raise ValueError(f"struct tcp_info has no member {name!r}") from None


_FIELD_NAMES: tuple[str, ...] = tuple(
    f.name for f in attrs.fields(TCPInfo) if f.name != "congestion"
)


def _check_layout_matches_fields() -> None:
    # The attrs fields and the C member table are written out separately (one for type checkers,
    # one for struct); they must name the same members in the same order.
    from_layout: list[str] = []
    for name, _, _ in FIELD_LAYOUT:
        if name == "_wscale_bits":
            from_layout += ["snd_wscale", "rcv_wscale"]
        elif name == "_app_limited_bits":
            from_layout += ["delivery_rate_app_limited", "fastopen_client_fail"]
        else:
            from_layout.append(name)
    if tuple(from_layout) != _FIELD_NAMES:
        raise AssertionError("TCPInfo fields and struct tcp_info layout disagree")


_check_layout_matches_fields()
