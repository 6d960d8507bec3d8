"""Hypothesis strategies for wire-layer value types (shared by the wire tests)."""

from __future__ import annotations

from typing import Any

from hypothesis import reject
from hypothesis import strategies as st

from tcpstack.wire import (
    IcmpMessage,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    encode_options,
    to_address,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addresses = u32.map(to_address)
# Kinds the codec does not interpret (2, 3, 4, 5, 8 are known; 0 and 1 carry no length).
unknown_kinds = st.integers(6, 255).filter(lambda k: k != 8)


@st.composite
def tcp_options(draw: st.DrawFn) -> TcpOptions:
    """Random options that fit in 40 octets, with a random wire order half of the time."""
    mss = draw(st.none() | u16)
    wscale = draw(st.none() | u8)
    sack_permitted = draw(st.booleans())
    timestamps = draw(st.none() | st.builds(Timestamps, u32, u32))
    sack_blocks = tuple(draw(st.lists(st.builds(SackBlock, u32, u32), max_size=4)))
    unknown = tuple(
        draw(st.lists(st.tuples(unknown_kinds, st.binary(max_size=6)), max_size=2))
    )
    options = TcpOptions(mss, wscale, sack_permitted, sack_blocks, timestamps, unknown)
    if draw(st.booleans()):
        # Items are permuted, not kinds, so that unknown options of the same kind keep an order
        # and ``unknown`` can be listed in wire order, the order decoding gives back.
        items: list[tuple[int, int]] = [
            (k, -1) for k, present in ((2, mss is not None), (3, wscale is not None),
                                       (4, sack_permitted), (5, bool(sack_blocks)),
                                       (8, timestamps is not None)) if present
        ]
        items += [(kind, index) for index, (kind, _) in enumerate(unknown)]
        items = list(draw(st.permutations(items)))
        unknown = tuple(unknown[index] for _, index in items if index >= 0)
        layout = [kind for kind, _ in items]
        for _ in range(draw(st.integers(0, 3))):
            layout.insert(draw(st.integers(0, len(layout))), 1)
        if draw(st.booleans()):
            layout.append(0)
        options = TcpOptions(mss, wscale, sack_permitted, sack_blocks, timestamps, unknown,
                             tuple(layout))
    try:
        encode_options(options)
    except ValueError:
        reject()  # more than 40 octets
    return options


def tcp_segments(max_payload: int = 1460) -> st.SearchStrategy[TcpSegment]:
    return st.builds(
        TcpSegment,
        src=addresses,
        dst=addresses,
        sport=u16,
        dport=u16,
        seq=u32,
        ack=u32,
        flags=u8.map(TcpFlags),
        window=u16,
        urgent=u16,
        options=tcp_options(),
        payload=st.binary(max_size=max_payload),
        ttl=u8,
        tos=u8,
        ip_id=u16,
        df=st.booleans(),
    )


@st.composite
def icmp_messages(draw: st.DrawFn) -> IcmpMessage:
    """Echo messages, error messages with a quoted TCP header, and other types."""
    kind = draw(st.sampled_from(["echo", "error", "other"]))
    common: dict[str, Any] = dict(src=draw(addresses), dst=draw(addresses), ttl=draw(u8),
                                  tos=draw(u8), ip_id=draw(u16))
    if kind == "echo":
        return IcmpMessage(type=draw(st.sampled_from([0, 8])), code=0, ident=draw(u16),
                           sequence=draw(u16), quoted=draw(st.binary(max_size=64)), **common)
    if kind == "other":
        return IcmpMessage(type=draw(st.sampled_from([5, 9, 10, 12, 13, 14, 42, 255])),
                           code=draw(u8), quoted=draw(st.binary(max_size=64)), **common)
    icmp_type = draw(st.sampled_from([3, 4, 11]))
    code = draw(st.integers(0, 15)) if icmp_type == 3 else draw(st.integers(0, 1))
    mtu = draw(st.integers(68, 0xFFFF)) if (icmp_type, code) == (3, 4) else None
    return IcmpMessage(type=icmp_type, code=code, next_hop_mtu=mtu, quoted_src=draw(addresses),
                       quoted_dst=draw(addresses), quoted_protocol=6, quoted_sport=draw(u16),
                       quoted_dport=draw(u16), quoted_seq=draw(u32), **common)
