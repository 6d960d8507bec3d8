"""TCP options: decoding into :class:`TcpOptions` and encoding back (RFC 9293 section 3.1).

Decoding records the wire order of option kinds in ``TcpOptions.layout`` (NOP and EOL included,
stopping at EOL), so that encoding a decoded set reproduces the same bytes. Options of kinds the
stack does not interpret are kept verbatim in ``unknown``; so is a second occurrence of a kind
already seen (the first one wins, and the duplicate still round-trips). Bytes after EOL are
padding and are not kept: encoding pads with zeros to the next multiple of four.

Without a layout, encoding uses Linux's order (``tcp_options_write``), whatever the flags:
``mss``, then ``sackOK,TS`` or ``nop,nop,TS`` or ``nop,nop,sackOK``, then ``nop,wscale``, then
``nop,nop,SACK``, then unknown options, then zero padding. A Linux SYN with everything is thus
``mss,sackOK,TS,nop,wscale`` and an established segment ``nop,nop,TS`` then ``nop,nop,SACK``.
"""

from __future__ import annotations

import struct

from ._fast import new_options
from .errors import MalformedPacket
from .segment import NO_OPTIONS, OptionKind, SackBlock, TcpOptions, Timestamps

__all__ = ["decode_options", "encode_options", "MAX_OPTIONS_LEN"]

MAX_OPTIONS_LEN = 40  # data offset is 4 bits of 32-bit words: 60 - 20 header octets

EOL = OptionKind.EOL.value
NOP = OptionKind.NOP.value
MSS = OptionKind.MSS.value
WSCALE = OptionKind.WSCALE.value
SACK_PERMITTED = OptionKind.SACK_PERMITTED.value
SACK = OptionKind.SACK.value
TIMESTAMP = OptionKind.TIMESTAMP.value

# Total option lengths (kind and length octets included) fixed by the RFCs.
_FIXED_LENGTH = {MSS: 4, WSCALE: 3, SACK_PERMITTED: 2, TIMESTAMP: 10}
_NAMES = {MSS: "MSS", WSCALE: "window scale", SACK_PERMITTED: "SACK-permitted", TIMESTAMP: "timestamps"}

_U16 = struct.Struct("!H")
_U8X3 = struct.Struct("!BBB")
_U8X4 = struct.Struct("!BBBB")
_U32X2 = struct.Struct("!II")
_MSS = struct.Struct("!BBH")
_TS = struct.Struct("!BBII")
_NOP_NOP_TS = struct.Struct("!BBBBII")
_SACKOK_TS = _NOP_NOP_TS  # same shape: 4,2,8,10 instead of 1,1,8,10
_NOP_NOP_TS_PREFIX = b"\x01\x01\x08\x0a"
_LAYOUT_NOP_NOP_TS = (NOP, NOP, TIMESTAMP)
_new_timestamps = tuple.__new__
# Linux's SYN and SYN-ACK with every option (tcp_options_write): mss, sackOK, TS, nop, wscale,
# 20 octets, one struct call each way. The fixed octets: kind and length of each option, NOP.
_LAYOUT_LINUX_SYN = (MSS, SACK_PERMITTED, TIMESTAMP, NOP, WSCALE)
_LINUX_SYN = struct.Struct("!BBHBBBBIIBBBB")
_LINUX_SYN_MSS = b"\x02\x04"
_LINUX_SYN_MIDDLE = b"\x04\x02\x08\x0a"  # sackOK, then TS kind and length
_LINUX_SYN_TAIL = b"\x01\x03\x03"  # nop, then wscale kind and length


def decode_options(data: bytes) -> TcpOptions:
    """Decode the options field of a TCP header (the bytes between offset 20 and the data)."""
    end = len(data)
    if end == 0:
        return NO_OPTIONS
    # The established-connection case on Linux peers: nop, nop, TS and nothing else.
    if end == 12 and data.startswith(_NOP_NOP_TS_PREFIX):
        tsval, tsecr = _U32X2.unpack_from(data, 4)
        return new_options(
            None, None, False, (), _new_timestamps(Timestamps, (tsval, tsecr)), (),
            _LAYOUT_NOP_NOP_TS,
        )
    if (
        end == 20
        and data.startswith(_LINUX_SYN_MSS)
        and data[4:8] == _LINUX_SYN_MIDDLE
        and data[16:19] == _LINUX_SYN_TAIL
    ):
        # The SYN of every Linux peer (and ours): the loop below would find the same values.
        (_, _, mss_value, _, _, _, _, tsval, tsecr, _, _, _, wscale_value) = _LINUX_SYN.unpack(data)
        return new_options(
            mss_value, wscale_value, True, (), _new_timestamps(Timestamps, (tsval, tsecr)), (),
            _LAYOUT_LINUX_SYN,
        )
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack_blocks: tuple[SackBlock, ...] = ()
    timestamps: Timestamps | None = None
    unknown: list[tuple[int, bytes]] = []
    layout: list[int] = []
    seen: set[int] = set()
    i = 0
    while i < end:
        kind = data[i]
        layout.append(kind)
        if kind == EOL:
            break
        if kind == NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket(
                f"TCP option kind {kind} at offset {i}: option length octet missing"
            )
        length = data[i + 1]
        if length < 2:
            raise MalformedPacket(
                f"TCP option kind {kind} at offset {i}: option length {length} is below 2"
            )
        if i + length > end:
            raise MalformedPacket(
                f"TCP option kind {kind} at offset {i}: option length {length} overruns "
                f"the {end}-octet options field"
            )
        fixed = _FIXED_LENGTH.get(kind)
        if fixed is not None and length != fixed:
            raise MalformedPacket(
                f"TCP {_NAMES[kind]} option length {length}, expected {fixed}"
            )
        if kind == SACK and (length < 10 or (length - 2) % 8):
            raise MalformedPacket(
                f"TCP SACK option length {length} is not 2 + 8n with n >= 1 (RFC 2018)"
            )
        if kind in seen or (fixed is None and kind != SACK):
            unknown.append((kind, data[i + 2 : i + length]))
        elif kind == MSS:
            mss = _U16.unpack_from(data, i + 2)[0]
        elif kind == WSCALE:
            wscale = data[i + 2]
        elif kind == SACK_PERMITTED:
            sack_permitted = True
        elif kind == TIMESTAMP:
            timestamps = _new_timestamps(Timestamps, _U32X2.unpack_from(data, i + 2))
        else:  # SACK
            sack_blocks = tuple(
                _new_timestamps(SackBlock, _U32X2.unpack_from(data, offset))
                for offset in range(i + 2, i + length, 8)
            )
        seen.add(kind)
        i += length
    return new_options(
        mss, wscale, sack_permitted, sack_blocks, timestamps, tuple(unknown), tuple(layout)
    )


def encode_options(options: TcpOptions) -> bytes:
    """Encode ``options`` padded to a multiple of four octets.

    Raises ``ValueError`` when the result exceeds 40 octets, a value is out of range, or a
    ``layout`` does not match the values (a kind without a value, or a value left out).
    """
    if options is NO_OPTIONS:
        return b""
    try:
        if options.layout is None:
            out = _encode_default(options)
        else:
            out = _encode_layout(options, options.layout)
    except struct.error as exc:
        _check_ranges(options)
        raise ValueError(f"TCP option value does not fit its field: {exc}") from exc
    if len(out) & 3:
        out += bytes(4 - (len(out) & 3))
    if len(out) > MAX_OPTIONS_LEN:
        raise ValueError(
            f"TCP options need {len(out)} octets, more than the {MAX_OPTIONS_LEN} a header holds "
            f"({options!r})"
        )
    return out


def _unknown_option(kind: int, body: bytes) -> bytes:
    if not 2 <= kind <= 255:
        raise ValueError(f"unknown TCP option kind {kind} is not in 2..255")
    if len(body) > 253:
        raise ValueError(f"TCP option kind {kind} carries {len(body)} octets, at most 253 fit")
    return bytes((kind, len(body) + 2)) + body


def _sack_option(blocks: tuple[SackBlock, ...]) -> bytes:
    return bytes((SACK, 2 + 8 * len(blocks))) + b"".join(
        _U32X2.pack(left, right) for left, right in blocks
    )


def _encode_default(options: TcpOptions) -> bytes:
    mss = options.mss
    wscale = options.wscale
    sack_permitted = options.sack_permitted
    timestamps = options.timestamps
    sack_blocks = options.sack_blocks
    unknown = options.unknown
    if (
        timestamps is not None
        and mss is None
        and wscale is None
        and not sack_permitted
        and not sack_blocks
        and not unknown
    ):
        return _NOP_NOP_TS.pack(NOP, NOP, TIMESTAMP, 10, timestamps[0], timestamps[1])
    parts: list[bytes] = []
    if mss is not None:
        parts.append(_MSS.pack(MSS, 4, mss))
    if timestamps is not None:
        if sack_permitted:
            parts.append(_SACKOK_TS.pack(SACK_PERMITTED, 2, TIMESTAMP, 10, *timestamps))
        else:
            parts.append(_NOP_NOP_TS.pack(NOP, NOP, TIMESTAMP, 10, *timestamps))
    elif sack_permitted:
        parts.append(bytes((NOP, NOP, SACK_PERMITTED, 2)))
    if wscale is not None:
        parts.append(_U8X4.pack(NOP, WSCALE, 3, wscale))
    if sack_blocks:
        parts.append(bytes((NOP, NOP)))
        parts.append(_sack_option(sack_blocks))
    for kind, body in unknown:
        parts.append(_unknown_option(kind, body))
    return b"".join(parts)


_LAYOUT_NOP_NOP_TS = (NOP, NOP, TIMESTAMP)


def _encode_layout(options: TcpOptions, layout: tuple[int, ...]) -> bytes:
    if layout == _LAYOUT_NOP_NOP_TS:
        # What every data segment and ACK carries once timestamps are on: one pack.
        ts = options.timestamps
        if (
            ts is not None and options.mss is None and options.wscale is None
            and not options.sack_permitted and not options.sack_blocks and not options.unknown
        ):
            return _NOP_NOP_TS.pack(NOP, NOP, TIMESTAMP, 10, ts[0], ts[1])
    elif layout == _LAYOUT_LINUX_SYN:
        ts = options.timestamps
        mss = options.mss
        wscale = options.wscale
        if (
            ts is not None and mss is not None and wscale is not None and options.sack_permitted
            and not options.sack_blocks and not options.unknown
        ):
            return _LINUX_SYN.pack(MSS, 4, mss, SACK_PERMITTED, 2, TIMESTAMP, 10, ts[0], ts[1],
                                   NOP, WSCALE, 3, wscale)
    parts: list[bytes] = []
    used: set[int] = set()
    unknown_left = list(options.unknown)
    after_eol = False
    for kind in layout:
        if after_eol and kind != EOL:
            # More EOLs are padding (FreeBSD pads its SYN options with them); anything else
            # after the end of the option list would be ignored by every receiver.
            raise ValueError(f"TCP option layout {layout} continues after EOL")
        if kind == EOL:
            parts.append(b"\x00")
            after_eol = True
            continue
        if kind == NOP:
            parts.append(b"\x01")
            continue
        if kind not in used:
            encoded = _encode_known(options, kind)
            if encoded is not None:
                parts.append(encoded)
                used.add(kind)
                continue
        for index, (unknown_kind, body) in enumerate(unknown_left):
            if unknown_kind == kind:
                parts.append(_unknown_option(kind, body))
                del unknown_left[index]
                break
        else:
            raise ValueError(f"TCP option layout {layout} lists kind {kind}, which has no value")
    for kind, name, present in (
        (MSS, "mss", options.mss is not None),
        (WSCALE, "wscale", options.wscale is not None),
        (SACK_PERMITTED, "sack_permitted", options.sack_permitted),
        (SACK, "sack_blocks", bool(options.sack_blocks)),
        (TIMESTAMP, "timestamps", options.timestamps is not None),
    ):
        if present and kind not in used:
            raise ValueError(f"TCP option layout {layout} omits kind {kind} but {name} is set")
    if unknown_left:
        raise ValueError(
            f"TCP option layout {layout} omits unknown option kinds "
            f"{[kind for kind, _ in unknown_left]}"
        )
    return b"".join(parts)


def _encode_known(options: TcpOptions, kind: int) -> bytes | None:
    if kind == MSS:
        return None if options.mss is None else _MSS.pack(MSS, 4, options.mss)
    if kind == WSCALE:
        return None if options.wscale is None else _U8X3.pack(WSCALE, 3, options.wscale)
    if kind == SACK_PERMITTED:
        return bytes((SACK_PERMITTED, 2)) if options.sack_permitted else None
    if kind == TIMESTAMP:
        ts = options.timestamps
        return None if ts is None else _TS.pack(TIMESTAMP, 10, ts[0], ts[1])
    if kind == SACK:
        return _sack_option(options.sack_blocks) if options.sack_blocks else None
    return None


def _check_ranges(options: TcpOptions) -> None:
    """Raise a ``ValueError`` naming the option value that does not fit its field."""
    checks: list[tuple[str, int | None, int]] = [
        ("mss", options.mss, 0xFFFF),
        ("wscale", options.wscale, 0xFF),
    ]
    if options.timestamps is not None:
        checks += [("tsval", options.timestamps.tsval, 0xFFFFFFFF),
                   ("tsecr", options.timestamps.tsecr, 0xFFFFFFFF)]
    for block in options.sack_blocks:
        checks += [("SACK left edge", block.left, 0xFFFFFFFF),
                   ("SACK right edge", block.right, 0xFFFFFFFF)]
    for name, value, limit in checks:
        if value is not None and (not isinstance(value, int) or not 0 <= value <= limit):
            raise ValueError(f"TCP option {name}={value} is out of range 0..{limit}")
