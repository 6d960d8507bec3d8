"""Script packets <-> live packets: building what the script injects, judging what the stack sends.

Sequence numbers on packet lines are relative, as packetdrill has them: an inbound line's ``seq``
counts from the script side's initial sequence number (0 in the script, ``Flow.remote_isn`` on
the wire) and its ``ack`` and SACK blocks from the stack's ISN, which the runner learns from the
stack's SYN or SYN-ACK; an outbound line the other way round. Timestamps follow packetdrill's
``run_packet.c``: the script side's TSvals go on the wire as written, so the stack's TSecr is
compared as written; the stack's TSvals are translated by the offset seen on its first timestamp
(inbound TSecr values are mapped through it) and are only checked when the script gives
``--tcp_ts_tick_usecs``.

Lenient option matching compares the set of options and their values; strict matching compares
the order and the NOP/EOL padding too (the ``layout``).
"""

from __future__ import annotations

import attrs

from tcpstack.conformance.nodes import IcmpEvent, PacketEvent
from tcpstack.wire.segment import (
    ECN_CE,
    ECN_ECT0,
    ECN_ECT1,
    ECN_NOT_ECT,
    IcmpMessage,
    OptionKind,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
)

__all__ = [
    "Flow", "Mismatch", "inbound_segment", "inbound_icmp", "match_outbound", "describe",
    "LOCAL_ADDRESS", "REMOTE_ADDRESS", "LOCAL_PORT", "REMOTE_PORT", "REMOTE_ISN",
]

MASK = 0xFFFFFFFF
LOCAL_ADDRESS = "192.168.0.1"  # packetdrill's defaults: the stack under test
REMOTE_ADDRESS = "192.0.2.1"  # the script's side (RFC 5737 TEST-NET-1)
LOCAL_PORT = 8080  # where scripts bind(), and where connect() goes on the remote side
REMOTE_PORT = 47_000  # the script side's port towards a listener (any unprivileged port)
# The script side's ISN on the wire: far from 0 so that a stack that confuses relative and
# absolute numbers is caught.
REMOTE_ISN = 0x1000_0000

_ECN_TAGS = {"noecn": ECN_NOT_ECT, "ect0": ECN_ECT0, "ect1": ECN_ECT1, "ce": ECN_CE}
_NOP = int(OptionKind.NOP)
_EOL = int(OptionKind.EOL)


@attrs.define
class Flow:
    """The connection the script talks about, and what the runner learned of the live one."""

    local_port: int = LOCAL_PORT
    remote_port: int = REMOTE_PORT
    remote_isn: int = REMOTE_ISN
    local_isn: int | None = None  # the stack's ISN, from its first SYN or SYN-ACK
    ts_offset: int | None = None  # live TSval - script TSval of the stack's clock

    def local_abs(self, rel: int) -> int:
        return (rel + (self.local_isn or 0)) & MASK

    def local_rel(self, live: int) -> int:
        return (live - (self.local_isn or 0)) & MASK

    def remote_abs(self, rel: int) -> int:
        return (rel + self.remote_isn) & MASK

    def remote_rel(self, live: int) -> int:
        return (live - self.remote_isn) & MASK


class Mismatch(Exception):
    """An outbound packet differs from the script's line; ``str()`` says how."""

    def __init__(self, what: str, expected: object, got: object) -> None:
        super().__init__(f"{what}: expected {expected} got {got}")
        self.what = what


def inbound_segment(ev: PacketEvent, flow: Flow, *, payload_byte: int = 0) -> TcpSegment:
    """The segment a ``<`` line injects, in live sequence space."""
    options = ev.tcp_options()
    if options is None:
        options = TcpOptions()
    ts = options.timestamps
    if ts is not None and ts.tsecr and flow.ts_offset is not None:
        options = attrs.evolve(options, timestamps=Timestamps(ts.tsval, (ts.tsecr + flow.ts_offset) & MASK))
    if options.sack_blocks:
        options = attrs.evolve(options, sack_blocks=tuple(
            SackBlock(flow.local_abs(b.left), flow.local_abs(b.right)) for b in options.sack_blocks
        ))
    seq = flow.remote_abs(ev.seq_start if ev.seq_start is not None else 0)
    ack = flow.local_abs(ev.ack) if ev.ack is not None else 0
    tos = ev.tos or 0
    if ev.ecn is not None:
        tos = (tos & ~0b11) | _ECN_TAGS.get(ev.ecn, ECN_NOT_ECT)
    return TcpSegment(
        src=REMOTE_ADDRESS, dst=LOCAL_ADDRESS, sport=flow.remote_port, dport=flow.local_port,
        seq=seq, ack=ack, flags=ev.tcp_flags, window=ev.window or 0, urgent=ev.urgent or 0,
        options=options, payload=bytes([payload_byte]) * ev.length, tos=tos,
        ttl=ev.ttl if ev.ttl is not None else 64,
    )


def inbound_icmp(ev: IcmpEvent, flow: Flow) -> IcmpMessage:
    """An ICMP error from the path towards the script side, quoting a segment the stack sent."""
    quoted_seq = flow.local_abs(ev.quoted.seq_start or 0) if ev.quoted is not None else flow.local_abs(0)
    return IcmpMessage(
        src=REMOTE_ADDRESS, dst=LOCAL_ADDRESS, type=ev.type, code=ev.code, next_hop_mtu=ev.mtu,
        quoted_src=LOCAL_ADDRESS, quoted_dst=REMOTE_ADDRESS, quoted_protocol=6,
        quoted_sport=flow.local_port, quoted_dport=flow.remote_port, quoted_seq=quoted_seq,
    )


_FLAG_CHARS = (
    ("S", TcpFlags.SYN), ("F", TcpFlags.FIN), ("R", TcpFlags.RST), ("P", TcpFlags.PSH),
    (".", TcpFlags.ACK), ("U", TcpFlags.URG), ("E", TcpFlags.ECE), ("W", TcpFlags.CWR),
)


def flag_text(flags: TcpFlags) -> str:
    return "".join(c for c, f in _FLAG_CHARS if flags & f) or "-"


def option_text(options: TcpOptions, flow: Flow, *, ts_live: bool = False) -> str:
    """Options in script syntax, in wire order when the layout is known."""
    parts: list[str] = []
    layout = options.layout
    if layout is None:
        layout = tuple(
            k for k, present in (
                (int(OptionKind.MSS), options.mss is not None),
                (int(OptionKind.SACK_PERMITTED), options.sack_permitted),
                (int(OptionKind.TIMESTAMP), options.timestamps is not None),
                (int(OptionKind.WSCALE), options.wscale is not None),
                (int(OptionKind.SACK), bool(options.sack_blocks)),
            ) if present
        )
    for kind in layout:
        if kind == _NOP:
            parts.append("nop")
        elif kind == _EOL:
            parts.append("eol")
        elif kind == OptionKind.MSS:
            parts.append(f"mss {options.mss}")
        elif kind == OptionKind.WSCALE:
            parts.append(f"wscale {options.wscale}")
        elif kind == OptionKind.SACK_PERMITTED:
            parts.append("sackOK")
        elif kind == OptionKind.SACK:
            parts.append("sack " + " ".join(
                f"{flow.remote_rel(b.left)}:{flow.remote_rel(b.right)}" for b in options.sack_blocks
            ))
        elif kind == OptionKind.TIMESTAMP and options.timestamps is not None:
            val = options.timestamps.tsval
            if not ts_live and flow.ts_offset is not None:
                val = (val - flow.ts_offset) & MASK
            parts.append(f"TS val {val} ecr {options.timestamps.tsecr}")
        else:
            parts.append(f"kind {kind}")
    return "<" + ",".join(parts) + ">"


def describe(segs: list[TcpSegment], flow: Flow) -> str:
    """Live segment(s) in script syntax, relative to the flow's ISNs."""
    if not segs:
        return "nothing"
    first, last = segs[0], segs[-1]
    flags = TcpFlags(0)
    for s in segs:
        flags |= s.flags
    length = sum(len(s.payload) for s in segs)
    start = flow.local_rel(first.seq)
    text = f"{flag_text(flags)} {start}:{(start + length) & MASK}({length})"
    if flags & TcpFlags.ACK:
        text += f" ack {flow.remote_rel(first.ack)}"
    text += f" win {last.window}"
    if not first.options.is_empty():
        text += " " + option_text(first.options, flow)
    if len(segs) > 1:
        text += f" [{len(segs)} segments]"
    return text


def learn_from_outbound(seg: TcpSegment, ev: PacketEvent, flow: Flow) -> None:
    """The stack's ISN from its SYN/SYN-ACK, its TS clock offset from its first timestamp."""
    if seg.flags & TcpFlags.SYN and not seg.flags & TcpFlags.ACK:
        # An active open: the stack chose its port (packetdrill learns it the same way).
        flow.local_port, flow.remote_port = seg.sport, seg.dport
    if seg.flags & TcpFlags.SYN and flow.local_isn is None and ev.seq_start is not None:
        flow.local_isn = (seg.seq - ev.seq_start) & MASK
    exp = ev.tcp_options()
    if (
        flow.ts_offset is None and seg.options.timestamps is not None and exp is not None
        and exp.timestamps is not None
    ):
        flow.ts_offset = (seg.options.timestamps.tsval - exp.timestamps.tsval) & MASK


def _lenient_key(options: TcpOptions, flow: Flow, *, outbound_live: bool) -> dict[str, object]:
    key: dict[str, object] = {}
    if options.mss is not None:
        key["mss"] = options.mss
    if options.wscale is not None:
        key["wscale"] = options.wscale
    if options.sack_permitted:
        key["sackOK"] = True
    if options.sack_blocks:
        blocks = options.sack_blocks
        if outbound_live:
            blocks = tuple(SackBlock(flow.remote_rel(b.left), flow.remote_rel(b.right)) for b in blocks)
        key["sack"] = " ".join(f"{b.left}:{b.right}" for b in blocks)
    if options.timestamps is not None:
        key["TS"] = True
    for kind, data in options.unknown:
        key[f"kind {kind}"] = data.hex()
    return key


def _normal_layout(layout: tuple[int, ...] | None) -> tuple[int, ...]:
    """Wire order up to and including the first EOL (what follows an EOL is padding)."""
    out: list[int] = []
    for kind in layout or ():
        out.append(kind)
        if kind == _EOL:
            break
    return tuple(out)


def match_options(
    seg: TcpSegment, ev: PacketEvent, flow: Flow, *, strict: bool, ts_tick_usecs: int | None,
    tolerance: float,
) -> None:
    expected = ev.tcp_options()
    if expected is None:
        return  # <...>: options not checked
    got = seg.options
    want_key = _lenient_key(expected, flow, outbound_live=False)
    got_key = _lenient_key(got, flow, outbound_live=True)
    if want_key != got_key:
        raise Mismatch("options", option_text(expected, flow, ts_live=True), option_text(got, flow))
    if expected.timestamps is not None and got.timestamps is not None:
        if got.timestamps.tsecr != expected.timestamps.tsecr:
            raise Mismatch("TS ecr", expected.timestamps.tsecr, got.timestamps.tsecr)
        if ts_tick_usecs and flow.ts_offset is not None:
            live = (got.timestamps.tsval - flow.ts_offset) & MASK
            want = expected.timestamps.tsval
            # packetdrill allows the tolerance, in ticks, on each side (plus one tick of rounding).
            slack = int(tolerance * 1e6 / ts_tick_usecs) + 1
            diff = (live - want) & MASK
            if min(diff, (-diff) & MASK) > slack:
                raise Mismatch("TS val", want, live)
    if strict and _normal_layout(expected.layout) != _normal_layout(got.layout):
        raise Mismatch("option layout (strict)", option_text(expected, flow, ts_live=True),
                       option_text(got, flow))


def match_outbound(
    segs: list[TcpSegment], ev: PacketEvent, flow: Flow, *, strict: bool,
    ts_tick_usecs: int | None = None, tolerance: float = 0.004,
) -> None:
    """Raise :class:`Mismatch` unless ``segs`` (one segment, or consecutive ones that add up to
    the line's length) are what ``ev`` describes."""
    first = segs[0]
    flags = TcpFlags(0)
    for s in segs:
        flags |= s.flags
    want_flags = ev.tcp_flags
    if len(segs) > 1 and not strict:
        # The script's line is one TSO packet; where a stack without TSO puts PSH inside the
        # run of segments that stand for it is not comparable. Strict matching compares it.
        flags &= ~TcpFlags.PSH
        want_flags &= ~TcpFlags.PSH
    if flags != want_flags:
        raise Mismatch("flags", ev.flags or "-", flag_text(flags))
    if ev.seq_start is not None and flow.local_rel(first.seq) != ev.seq_start:
        raise Mismatch("seq", ev.seq_start, flow.local_rel(first.seq))
    length = sum(len(s.payload) for s in segs)
    if length != ev.length:
        raise Mismatch("length", ev.length, length)
    if ev.ack is not None:
        if not first.flags & TcpFlags.ACK:
            raise Mismatch("ack", ev.ack, "no ACK bit")
        got_ack = flow.remote_rel(first.ack)
        if got_ack != ev.ack:
            raise Mismatch("ack", ev.ack, got_ack)
    if ev.window is not None and first.window != ev.window:
        raise Mismatch("win", ev.window, first.window)
    if ev.urgent is not None and first.urgent != ev.urgent:
        raise Mismatch("urg", ev.urgent, first.urgent)
    if ev.ecn is not None:
        want_ecn = _ECN_TAGS.get(ev.ecn)
        if want_ecn is not None and first.ecn != want_ecn:
            raise Mismatch("ECN codepoint", ev.ecn, first.ecn)
    if ev.tos is not None and first.tos != ev.tos:
        raise Mismatch("tos", hex(ev.tos), hex(first.tos))
    match_options(first, ev, flow, strict=strict, ts_tick_usecs=ts_tick_usecs,
                  tolerance=tolerance)
