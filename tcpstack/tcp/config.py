"""Behaviour profiles and per-connection options.

A :class:`Profile` fixes what the RFCs leave open: option order on the wire, initial window,
timer constants, retry counts, buffer defaults. ``linux`` (the default) carries the stock Linux 6.x
values (``/proc/sys/net/ipv4`` defaults and include/net/tcp.h constants); ``freebsd`` carries the
FreeBSD values that the freebsd-net/tcp-testsuite scripts in the conformance corpus assume.

:class:`ConnectionOptions` is what a user sets (``None`` meaning "the profile's default");
:meth:`ConnectionOptions.resolve` fills every ``None`` from the profile, checks ranges, and returns
the :class:`ResolvedOptions` the engine reads.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from tcpstack.wire.segment import OptionKind

__all__ = [
    "OptionWriter",
    "SynFinPolicy",
    "Profile",
    "LINUX",
    "FREEBSD",
    "PROFILES",
    "resolve_options",
    "get_profile",
    "KeepaliveOptions",
    "ConnectionOptions",
    "ResolvedOptions",
    "MIN_MSS",
    "MAX_MSS",
    "MIN_MTU",
    "MAX_MTU",
    "MAX_BUFFER",
]

_EOL = int(OptionKind.EOL)
_NOP = int(OptionKind.NOP)
_MSS = int(OptionKind.MSS)
_WSCALE = int(OptionKind.WSCALE)
_SACK_PERM = int(OptionKind.SACK_PERMITTED)
_SACK = int(OptionKind.SACK)
_TS = int(OptionKind.TIMESTAMP)

# Encoded lengths (RFC 9293 3.2, RFC 7323, RFC 2018) used to place FreeBSD's alignment padding.
_OPTION_LEN = {_NOP: 1, _EOL: 1, _MSS: 4, _WSCALE: 3, _SACK_PERM: 2, _TS: 10}
MAX_OPTION_SPACE = 40  # bytes of options a TCP header can carry (data offset 15 words)

MIN_MSS = 88  # Linux TCP_MIN_MSS: smallest MSS a user may set (TCP_MAXSEG)
MAX_MSS = 65495  # 65535 - 20 (IPv4) - 20 (TCP): the largest segment an IPv4 datagram holds
MIN_MTU = 68  # RFC 791: every IPv4 link carries 68-octet datagrams
MAX_MTU = 65535
# 65535 << 14 (RFC 7323 section 2.3, the largest scale): no window can cover more, and it keeps
# per-connection memory bounded.
MAX_BUFFER = 1 << 30


class OptionWriter(enum.Enum):
    """Which operating system's option writer decides the order and padding of SYN options."""

    LINUX = "linux"  # net/ipv4/tcp_output.c tcp_options_write(): 32-bit words, NOP padded
    FREEBSD = "freebsd"  # sys/netinet/tcp_output.c tcp_addoptions(): per-option alignment, EOL tail


class SynFinPolicy(enum.Enum):
    """What a segment with both SYN and FIN does to a listener or a SYN-SENT connection (RFC 9293
    leaves it open; scanners use it to fingerprint stacks)."""

    # Linux tcp_rcv_state_process(): LISTEN discards it; SYN-SENT takes it as a SYN (simultaneous
    # open) and the FIN is never processed.
    DROP_AT_LISTEN = "drop-at-listen"
    # FreeBSD net.inet.tcp.drop_synfin=0: taken as a SYN everywhere, the FIN ignored (the SYN-ACK
    # acknowledges only the SYN).
    IGNORE_FIN = "ignore-fin"
    # FreeBSD net.inet.tcp.drop_synfin=1: dropped in LISTEN and SYN-SENT.
    DROP = "drop"


def _linux_syn_layout(mss: bool, sack: bool, ts: bool, wscale: bool) -> tuple[int, ...]:
    # tcp_options_write() writes whole words: MSS; then TS, sharing its word with SACK_PERM when
    # both are on (the first two bytes would be NOPs otherwise); then a NOP-padded SACK_PERM word if
    # it was not folded into TS; then NOP + wscale.
    layout: list[int] = []
    if mss:
        layout.append(_MSS)
    if ts:
        layout += [_SACK_PERM, _TS] if sack else [_NOP, _NOP, _TS]
    elif sack:
        layout += [_NOP, _NOP, _SACK_PERM]
    if wscale:
        layout += [_NOP, _WSCALE]
    return tuple(layout)


def _freebsd_syn_layout(mss: bool, sack: bool, ts: bool, wscale: bool) -> tuple[int, ...]:
    # tcp_addoptions() walks the option bits in order MSS, WSCALE, SACK_PERM, TS, padding each with
    # NOPs to its preferred alignment (MSS at 0 mod 4, WSCALE at 1 mod 2 and never first,
    # SACK_PERM at 0 mod 2, TS at 2 mod 4 and never first), then ends with EOL and zero bytes up
    # to a 4-byte boundary. The zero padding bytes are EOL kinds too (TCPOPT_PAD == TCPOPT_EOL).
    layout: list[int] = []
    length = 0

    def pad_until(ok: Any) -> None:
        nonlocal length
        while not ok(length):
            layout.append(_NOP)
            length += 1

    def put(kind: int) -> None:
        nonlocal length
        layout.append(kind)
        length += _OPTION_LEN[kind]

    if mss:
        pad_until(lambda n: n % 4 == 0)
        put(_MSS)
    if wscale:
        pad_until(lambda n: n != 0 and n % 2 == 1)
        put(_WSCALE)
    if sack:
        pad_until(lambda n: n % 2 == 0)
        put(_SACK_PERM)
    if ts:
        pad_until(lambda n: n != 0 and n % 4 == 2)
        put(_TS)
    while length % 4:
        layout.append(_EOL)
        length += 1
    return tuple(layout)


_SYN_WRITERS = {OptionWriter.LINUX: _linux_syn_layout, OptionWriter.FREEBSD: _freebsd_syn_layout}


def _default_syn_option_layout(profile: Profile) -> tuple[int, ...]:
    return _SYN_WRITERS[profile.option_writer](True, True, True, True)


def _to_layout(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(kind) for kind in value)


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _optional_non_negative(inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _non_negative(inst, attribute, value)


def _optional_positive(inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive(inst, attribute, value)


@attrs.frozen(slots=True)
class Profile:
    """Where the RFCs leave a choice, what one operating system does.

    Times are seconds, sizes bytes. ``syn_option_layout`` is the order of option kinds (as in
    :attr:`tcpstack.wire.segment.TcpOptions.layout`) on a SYN or SYN-ACK that carries MSS, SACK
    permitted, timestamps and window scale; :meth:`syn_layout` gives it for any subset.
    """

    name: str
    option_writer: OptionWriter
    initial_window_segments: int = attrs.field(validator=_positive)  # RFC 6928 IW
    min_rto: float = attrs.field(validator=_positive)
    initial_rto: float = attrs.field(validator=_positive)  # RFC 6298 2.1
    max_rto: float = attrs.field(validator=_positive)
    delayed_ack_timeout: float = attrs.field(validator=_positive)
    # Segments ACKed at once at the start of a connection (Linux quick-ack mode); 0 = none.
    quickack_segments: int = attrs.field(validator=_non_negative)
    receive_buffer: int = attrs.field(validator=_positive)
    send_buffer: int = attrs.field(validator=_positive)
    msl: float = attrs.field(validator=_positive)  # TIME-WAIT lasts 2*MSL (RFC 9293 3.6.1)
    syn_retries: int = attrs.field(validator=_non_negative)
    synack_retries: int = attrs.field(validator=_non_negative)
    data_retries: int = attrs.field(validator=_non_negative)
    # Challenge ACKs (RFC 5961 section 7) allowed per second across the stack.
    challenge_ack_limit: int = attrs.field(validator=_positive)
    cwnd_validation: bool  # restart from the restart window after an idle RTO (RFC 5681 4.1/7661)
    rst_on_close_with_unread_data: bool  # RFC 2525 2.17: close() with unread data sends RST
    syn_option_layout: tuple[int, ...] = attrs.field(
        default=attrs.Factory(_default_syn_option_layout, takes_self=True),
        converter=_to_layout,
    )
    data_ts_layout: tuple[int, ...] = (_NOP, _NOP, _TS)
    sack_layout: tuple[int, ...] = (_NOP, _NOP, _SACK)
    dup_ack_threshold: int = attrs.field(default=3, validator=_positive)  # RFC 5681 3.2
    # Added to every backed-off RTO (FreeBSD net.inet.tcp.rexmit_slop); Linux adds nothing.
    rto_slop: float = attrs.field(default=0.0, validator=_non_negative)
    # Abort a connection not established after this long (FreeBSD net.inet.tcp.keepinit);
    # None: only the SYN retry count limits it (Linux).
    connect_timeout: float | None = None
    # Minimum interval between out-of-window duplicate ACKs and challenge ACKs on one connection
    # (Linux net.ipv4.tcp_invalid_ratelimit, RFC 5961 section 10 leaves the rate to implementations).
    invalid_ack_interval: float = attrs.field(default=0.0, validator=_non_negative)
    # The largest receive buffer autotuning may reach: the window scale is chosen to cover it
    # (Linux tcp_select_initial_window with tcp_rmem[2]; FreeBSD sb_max_adj). 0: the buffer.
    receive_buffer_max: int = attrs.field(default=0, validator=_non_negative)
    # Send buffer autotuning (Linux tcp_sndbuf_expand, capped at tcp_wmem[2]): a send buffer the
    # user did not set grows toward two congestion windows. 0: no send autotuning.
    send_buffer_max: int = attrs.field(default=0, validator=_non_negative)
    # Receive buffer autotuning (Linux tcp_moderate_rcvbuf, dynamic right-sizing in
    # tcp_rcv_space_adjust) up to receive_buffer_max, for buffers the user did not set.
    moderate_rcvbuf: bool = False
    # RFC 8985 RACK-TLP loss detection and tail loss probes (Linux tcp_recovery=1,
    # tcp_early_retrans=3); off: RFC 6675 DupThresh/IsLost only, no probes.
    rack_tlp: bool = False
    # RFC 3465 L: slow start grows cwnd by at most L*SMSS per ACK; None: by every byte ACKed,
    # as Linux tcp_slow_start does (a stretch ACK may double cwnd).
    abc_limit_segments: int | None = attrs.field(default=2, validator=_optional_positive)
    # Receive window announcement. Linux (True): the window starts at 64 KiB rounded down to
    # whole MSS and opens as in-order data arrives (rcv_ssthresh, tcp_grow_window), in steps of
    # at least min(buffer/2, MSS). FreeBSD (False): tcp_output() announces sbspace(so_rcv), the
    # free buffer, whenever it sends.
    window_clamp_growth: bool = True
    # FreeBSD tcp_mss(): once the MSS is known the receive buffer is rounded up to a whole number
    # of segments (at most sb_max), so a 65536-byte buffer becomes 45 * 1460 = 65700 bytes.
    rcvbuf_mss_roundup: bool = False
    # SYN retransmissions that still carry ECE|CWR (RFC 3168 6.1.1.1 fallback); FreeBSD
    # net.inet.tcp.ecn.maxretries. None: every retransmission asks for ECN.
    ecn_syn_retries: int | None = attrs.field(default=None, validator=_optional_non_negative)
    synfin_policy: SynFinPolicy = SynFinPolicy.DROP_AT_LISTEN
    # RFC 9293 3.10.7.3: text in a SYN received in SYN-SENT is queued until ESTABLISHED
    # (FreeBSD keeps it in the reassembly queue); Linux discards it (tcp_rcv_synsent_state_process).
    queue_syn_text: bool = False
    # TIME-WAIT as FreeBSD tcp_twcheck(): RSTs ignored (RFC 1337), segments without ACK dropped,
    # every segment but an exact duplicate ACK answered. Linux (False, tcp_rfc1337=0): a RST
    # ends TIME-WAIT and in-window bare ACKs are dropped silently (tcp_timewait_state_process).
    bsd_time_wait: bool = False

    def __attrs_post_init__(self) -> None:
        expected = self.syn_layout(mss=True, sack=True, ts=True, wscale=True)
        if self.syn_option_layout != expected:
            raise ValueError(
                f"profile {self.name!r}: syn_option_layout {self.syn_option_layout} disagrees with "
                f"the {self.option_writer.value} option writer's {expected}"
            )
        if self.min_rto > self.max_rto:
            raise ValueError(f"profile {self.name!r}: min_rto {self.min_rto} > max_rto {self.max_rto}")

    def syn_layout(self, *, mss: bool, sack: bool, ts: bool, wscale: bool) -> tuple[int, ...]:
        """Option kinds, in wire order with padding, of a SYN/SYN-ACK carrying the given options."""
        return _SYN_WRITERS[self.option_writer](mss, sack, ts, wscale)

    def data_layout(self, *, ts: bool, sack: bool) -> tuple[int, ...]:
        """Option kinds of a non-SYN segment: NOP,NOP,TS then NOP,NOP,SACK (both OSes agree)."""
        return (self.data_ts_layout if ts else ()) + (self.sack_layout if sack else ())

    def max_sack_blocks(self, *, ts: bool) -> int:
        """SACK blocks that fit beside the other options (RFC 2018 section 3: 4, or 3 with TS)."""
        used = sum(_OPTION_LEN[k] for k in self.data_ts_layout) if ts else 0
        used += len(self.sack_layout) - 1 + 2  # the padding before SACK, then its kind and length
        return (MAX_OPTION_SPACE - used) // 8

    @property
    def time_wait(self) -> float:
        """The TIME-WAIT duration, 2*MSL."""
        return 2 * self.msl


LINUX = Profile(
    name="linux",
    option_writer=OptionWriter.LINUX,
    initial_window_segments=10,  # TCP_INIT_CWND
    min_rto=0.2,  # TCP_RTO_MIN, net.ipv4.tcp_rto_min_us 200000
    initial_rto=1.0,  # TCP_TIMEOUT_INIT
    max_rto=120.0,  # TCP_RTO_MAX
    delayed_ack_timeout=0.04,  # TCP_DELACK_MIN (and TCP_ATO_MIN), HZ/25
    quickack_segments=16,  # TCP_MAX_QUICKACKS; tcp_incr_quickack() caps it at rcv_wnd/(2*rcv_mss)
    receive_buffer=131072,  # net.ipv4.tcp_rmem[1]
    send_buffer=16384,  # net.ipv4.tcp_wmem[1], the start value autotuning grows
    msl=30.0,  # TCP_TIMEWAIT_LEN is 60 s = 2*MSL
    syn_retries=6,  # net.ipv4.tcp_syn_retries
    synack_retries=5,  # net.ipv4.tcp_synack_retries
    data_retries=15,  # net.ipv4.tcp_retries2
    # net.ipv4.tcp_challenge_ack_limit: INT_MAX since Linux 6.0 (the global limit is off, the
    # per-socket tcp_invalid_ratelimit below throttles instead).
    challenge_ack_limit=2**31 - 1,
    cwnd_validation=True,  # net.ipv4.tcp_slow_start_after_idle = 1
    rst_on_close_with_unread_data=True,  # tcp_close(): "data was lost" -> RST (RFC 2525 2.17)
    invalid_ack_interval=0.5,  # net.ipv4.tcp_invalid_ratelimit = 500 ms
    receive_buffer_max=6 * 1024 * 1024,  # net.ipv4.tcp_rmem[2]
    send_buffer_max=4 * 1024 * 1024,  # net.ipv4.tcp_wmem[2]
    moderate_rcvbuf=True,  # net.ipv4.tcp_moderate_rcvbuf = 1
    rack_tlp=True,  # net.ipv4.tcp_recovery = 1 (RACK), tcp_early_retrans = 3 (TLP)
    abc_limit_segments=None,  # tcp_slow_start: cwnd += acked segments, no per-ACK cap
)

FREEBSD = Profile(
    name="freebsd",
    option_writer=OptionWriter.FREEBSD,
    initial_window_segments=10,  # net.inet.tcp.initcwnd_segments
    min_rto=0.03,  # net.inet.tcp.rexmit_min = 30 ms
    initial_rto=1.0,  # net.inet.tcp.rexmit_initial = 1000 ms (TCPTV_RTOBASE)
    max_rto=64.0,  # TCPTV_REXMTMAX
    delayed_ack_timeout=0.1,  # net.inet.tcp.delacktime = 100 ms (scripts set 40 when they need it)
    quickack_segments=0,  # FreeBSD has no quick-ack mode: it ACKs every second segment from the start
    receive_buffer=65536,  # net.inet.tcp.recvspace
    send_buffer=32768,  # net.inet.tcp.sendspace
    msl=30.0,  # net.inet.tcp.msl = 30000 ms
    syn_retries=12,  # TCP_MAXRXTSHIFT (snd-syn-rtx-max-number-ipv4.pkt: 12 retransmissions)
    synack_retries=3,  # net.inet.tcp.syncache.rexmtlimit
    data_retries=12,  # TCP_MAXRXTSHIFT
    challenge_ack_limit=5,  # net.inet.tcp.ack_war_cnt per ack_war_timewindow (1000 ms)
    cwnd_validation=True,  # cc_after_idle(): restart window after an idle RTO
    rst_on_close_with_unread_data=False,  # tcp_disconnect() flushes so_rcv and sends FIN
    rto_slop=0.2,  # net.inet.tcp.rexmit_slop = 200 ms
    connect_timeout=75.0,  # net.inet.tcp.keepinit = 75000 ms
    receive_buffer_max=2 * 1024 * 1024,  # kern.ipc.maxsockbuf
    rack_tlp=False,  # the default stack: RFC 6675 SACK recovery (RACK lives in tcp_rack)
    abc_limit_segments=2,  # net.inet.tcp.abc_l_var = 2
    window_clamp_growth=False,  # tcp_output(): recwin = sbspace(&so->so_rcv)
    rcvbuf_mss_roundup=True,  # tcp_mss(): roundup(so_rcv.sb_hiwat, mss)
    ecn_syn_retries=1,  # net.inet.tcp.ecn.maxretries = 1
    synfin_policy=SynFinPolicy.IGNORE_FIN,  # net.inet.tcp.drop_synfin = 0
    queue_syn_text=True,
    bsd_time_wait=True,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LINUX, FREEBSD)}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown TCP profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}"
        ) from None


def _number(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, got {value!r}")


def _optional_number(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _number(inst, attribute, value)


def _integer(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")


def _optional_integer(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _integer(inst, attribute, value)


_bool = attrs.validators.instance_of(bool)
_str = attrs.validators.instance_of(str)

# Linux's bounds for TCP_KEEPIDLE/TCP_KEEPINTVL (MAX_TCP_KEEPIDLE/INTVL, seconds) and
# TCP_KEEPCNT (MAX_TCP_KEEPCNT).
MAX_KEEPALIVE_TIME = 32767.0
MAX_KEEPALIVE_COUNT = 127
MAX_SYN_RETRIES = 127  # Linux MAX_TCP_SYNCNT


@attrs.frozen(slots=True)
class KeepaliveOptions:
    """RFC 1122 4.2.3.6 keep-alives: after ``idle`` seconds without traffic, probe every
    ``interval`` seconds; ``count`` unanswered probes abort the connection (Linux defaults)."""

    enabled: bool = attrs.field(default=False, validator=_bool)
    idle: float = attrs.field(default=7200.0, validator=_number)
    interval: float = attrs.field(default=75.0, validator=_number)
    count: int = attrs.field(default=9, validator=_integer)

    def validate(self) -> None:
        """Raise ``ValueError`` if a value is out of Linux's accepted range."""
        for name, value in (("idle", self.idle), ("interval", self.interval)):
            if not 0 < value <= MAX_KEEPALIVE_TIME:
                raise ValueError(
                    f"keepalive.{name} must be in (0, {MAX_KEEPALIVE_TIME:g}] s, got {value!r}"
                )
        if not 1 <= self.count <= MAX_KEEPALIVE_COUNT:
            raise ValueError(
                f"keepalive.count must be in 1..{MAX_KEEPALIVE_COUNT}, got {self.count!r}"
            )


@attrs.frozen(slots=True)
class ConnectionOptions:
    """What the application chooses for one connection; ``None`` takes the profile's default."""

    profile: str = attrs.field(default="linux", validator=_str)
    mss: int | None = attrs.field(default=None, validator=_optional_integer)  # our advertised MSS
    mtu: int = attrs.field(default=1500, validator=_integer)
    send_buffer: int | None = attrs.field(default=None, validator=_optional_integer)
    receive_buffer: int | None = attrs.field(default=None, validator=_optional_integer)
    nodelay: bool = attrs.field(default=False, validator=_bool)  # disable Nagle (RFC 896)
    # ACK every in-order data segment at once (Linux TCP_QUICKACK, here kept on): no delayed
    # ACK, so the peer's RTT samples are the path's, not the path's plus our ACK delay.
    quickack: bool = attrs.field(default=False, validator=_bool)
    congestion: str = attrs.field(default="cubic", validator=_str)
    hystart: bool = attrs.field(default=True, validator=_bool)
    keepalive: KeepaliveOptions = attrs.field(
        factory=KeepaliveOptions, validator=attrs.validators.instance_of(KeepaliveOptions)
    )
    user_timeout: float | None = attrs.field(default=None, validator=_optional_number)  # RFC 5482
    sack: bool = attrs.field(default=True, validator=_bool)
    timestamps: bool = attrs.field(default=True, validator=_bool)
    window_scaling: bool = attrs.field(default=True, validator=_bool)
    ecn: bool = attrs.field(default=False, validator=_bool)
    time_wait: float | None = attrs.field(default=None, validator=_optional_number)
    syn_retries: int | None = attrs.field(default=None, validator=_optional_integer)
    insecure_rst: bool = attrs.field(default=False, validator=_bool)  # RFC 5961 3.2/5.2 off
    insecure_syn: bool = attrs.field(default=False, validator=_bool)  # RFC 5961 4.2 off
    max_ooo_bytes: int | None = attrs.field(default=None, validator=_optional_integer)
    max_ooo_ranges: int = attrs.field(default=64, validator=_integer)
    initial_rto: float | None = attrs.field(default=None, validator=_optional_number)
    min_rto: float | None = attrs.field(default=None, validator=_optional_number)
    # TCP segmentation offload: build segments of several MSS when the link cuts them
    # (Link.gso_max_size > 0); off sends one MSS per segment, for comparison.
    tso: bool = attrs.field(default=True, validator=_bool)

    def resolve(self) -> ResolvedOptions:
        """Fill every ``None`` from the profile and check every range; ``ValueError`` names the
        offending option. Whether ``congestion`` names a known algorithm is the engine's check."""
        profile = get_profile(self.profile)

        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ValueError(f"mtu must be in {MIN_MTU}..{MAX_MTU}, got {self.mtu}")
        path_mss = self.mtu - 40
        if self.mss is None:
            mss = path_mss
        else:
            if not MIN_MSS <= self.mss <= MAX_MSS:
                raise ValueError(f"mss must be in {MIN_MSS}..{MAX_MSS}, got {self.mss}")
            # Like TCP_MAXSEG, a user MSS only lowers what the interface allows (tcp_mss_clamp).
            mss = min(self.mss, path_mss)

        send_buffer = profile.send_buffer if self.send_buffer is None else self.send_buffer
        receive_buffer = (
            profile.receive_buffer if self.receive_buffer is None else self.receive_buffer
        )
        for name, size in (("send_buffer", send_buffer), ("receive_buffer", receive_buffer)):
            if not 0 < size <= MAX_BUFFER:
                raise ValueError(f"{name} must be in 1..{MAX_BUFFER} bytes, got {size}")

        if not self.congestion:
            raise ValueError("congestion must name an algorithm, got ''")
        self.keepalive.validate()
        if self.user_timeout is not None and not self.user_timeout > 0:
            raise ValueError(f"user_timeout must be > 0 s or None, got {self.user_timeout!r}")

        time_wait = profile.time_wait if self.time_wait is None else float(self.time_wait)
        if not 0 <= time_wait <= 2 * 3600:
            raise ValueError(f"time_wait must be in 0..7200 s, got {time_wait!r}")

        syn_retries = profile.syn_retries if self.syn_retries is None else self.syn_retries
        if not 1 <= syn_retries <= MAX_SYN_RETRIES:
            raise ValueError(f"syn_retries must be in 1..{MAX_SYN_RETRIES}, got {syn_retries}")

        max_ooo_bytes = receive_buffer if self.max_ooo_bytes is None else self.max_ooo_bytes
        if not 0 < max_ooo_bytes <= MAX_BUFFER:
            raise ValueError(f"max_ooo_bytes must be in 1..{MAX_BUFFER}, got {max_ooo_bytes}")
        if not 1 <= self.max_ooo_ranges <= 65536:
            raise ValueError(f"max_ooo_ranges must be in 1..65536, got {self.max_ooo_ranges}")

        min_rto = profile.min_rto if self.min_rto is None else float(self.min_rto)
        initial_rto = profile.initial_rto if self.initial_rto is None else float(self.initial_rto)
        for name, rto in (("min_rto", min_rto), ("initial_rto", initial_rto)):
            if not 0 < rto <= profile.max_rto:
                raise ValueError(
                    f"{name} must be in (0, {profile.max_rto:g}] s (the profile's max_rto), got {rto!r}"
                )

        return ResolvedOptions(
            profile=profile.name,
            profile_obj=profile,
            mss=mss,
            mtu=self.mtu,
            send_buffer=send_buffer,
            receive_buffer=receive_buffer,
            nodelay=self.nodelay,
            quickack=self.quickack,
            congestion=self.congestion,
            hystart=self.hystart,
            keepalive=self.keepalive,
            user_timeout=None if self.user_timeout is None else float(self.user_timeout),
            sack=self.sack,
            timestamps=self.timestamps,
            window_scaling=self.window_scaling,
            ecn=self.ecn,
            time_wait=time_wait,
            syn_retries=syn_retries,
            insecure_rst=self.insecure_rst,
            insecure_syn=self.insecure_syn,
            max_ooo_bytes=max_ooo_bytes,
            max_ooo_ranges=self.max_ooo_ranges,
            initial_rto=initial_rto,
            min_rto=min_rto,
            tso=self.tso,
        )


# Every connection of a stack shares one ConnectionOptions value, so resolving it once per value
# (not once per connection) takes the checks off the connect/accept path. A hit is only used
# while its profile is still the one registered under that name: PROFILES may be replaced at
# run time (conformance sysctls, tests). Bounded: cleared when full.
_RESOLVED: dict[ConnectionOptions, ResolvedOptions] = {}
_RESOLVED_MAX = 256
# The options object resolved last and its result (an identity check, see resolve_options).
_LAST_RESOLVED: tuple[ConnectionOptions, ResolvedOptions] | None = None


def resolve_options(options: ConnectionOptions) -> ResolvedOptions:
    """``options.resolve()``, cached per options value (and current profile object)."""
    # Most connections reuse the very same options object (the stack's or the listener's):
    # an identity check first spares hashing all of its fields on every connect.
    last = _LAST_RESOLVED
    if last is not None and last[0] is options and PROFILES.get(options.profile) is last[1].profile_obj:
        return last[1]
    resolved = _RESOLVED.get(options)
    if resolved is None or PROFILES.get(options.profile) is not resolved.profile_obj:
        resolved = options.resolve()
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[options] = resolved
    _remember(options, resolved)
    return resolved


def _remember(options: ConnectionOptions, resolved: ResolvedOptions) -> None:
    global _LAST_RESOLVED
    _LAST_RESOLVED = (options, resolved)


@attrs.frozen(slots=True, kw_only=True)
class ResolvedOptions:
    """:class:`ConnectionOptions` with every default filled in and checked; built by
    :meth:`ConnectionOptions.resolve`. ``profile_obj`` is the :class:`Profile` named by
    ``profile``; ``mss`` is the MSS we advertise (the user's, capped at ``mtu - 40``)."""

    profile: str
    profile_obj: Profile
    mss: int
    mtu: int
    send_buffer: int
    receive_buffer: int
    nodelay: bool
    quickack: bool
    congestion: str
    hystart: bool
    keepalive: KeepaliveOptions
    user_timeout: float | None  # None: RFC 5482 user timeout off (data_retries governs)
    sack: bool
    timestamps: bool
    window_scaling: bool
    ecn: bool
    time_wait: float
    syn_retries: int
    insecure_rst: bool
    insecure_syn: bool
    max_ooo_bytes: int
    max_ooo_ranges: int
    initial_rto: float
    min_rto: float
    tso: bool

    @property
    def max_rto(self) -> float:
        return self.profile_obj.max_rto

    def syn_layout(self, *, mss: bool = True) -> tuple[int, ...]:
        """The option layout of our SYN with the options this connection offers."""
        return self.profile_obj.syn_layout(
            mss=mss, sack=self.sack, ts=self.timestamps, wscale=self.window_scaling
        )
