"""TCP option decoding and encoding: layouts, defaults, unknown options and every error path."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from wire_strategies import tcp_options

from tcpstack.wire import (
    NO_OPTIONS,
    MalformedPacket,
    SackBlock,
    TcpOptions,
    Timestamps,
    decode_options,
    encode_options,
)

LINUX_SYN = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=Timestamps(1, 0))


def test_linux_syn_default_layout() -> None:
    # mss, sackOK, TS, nop, wscale: 20 octets, as Linux sends them.
    expected = (
        struct.pack("!BBH", 2, 4, 1460) + bytes((4, 2)) + struct.pack("!BBII", 8, 10, 1, 0)
        + bytes((1, 3, 3, 7))
    )
    assert encode_options(LINUX_SYN) == expected
    assert decode_options(expected).layout == (2, 4, 8, 1, 3)


def test_linux_syn_ack_without_timestamps() -> None:
    # The packetdrill line "<mss 1460,nop,nop,sackOK,nop,wscale 8>".
    options = TcpOptions(mss=1460, wscale=8, sack_permitted=True)
    encoded = encode_options(options)
    assert decode_options(encoded).layout == (2, 1, 1, 4, 1, 3)
    assert encoded == bytes.fromhex("020405b4" "01010402" "01030308")


def test_established_default_layout_timestamps_then_sack() -> None:
    options = TcpOptions(timestamps=Timestamps(5, 6), sack_blocks=[(100, 200), (300, 400)])
    encoded = encode_options(options)
    assert decode_options(encoded).layout == (1, 1, 8, 1, 1, 5)
    assert encoded[:12] == struct.pack("!BBBBII", 1, 1, 8, 10, 5, 6)
    assert encoded[12:] == bytes((1, 1, 5, 18)) + struct.pack("!4I", 100, 200, 300, 400)


def test_sack_permitted_alone_and_mss_alone() -> None:
    assert encode_options(TcpOptions(sack_permitted=True)) == bytes((1, 1, 4, 2))
    assert encode_options(TcpOptions(mss=536)) == struct.pack("!BBH", 2, 4, 536)


def test_unknown_options_are_padded_with_eol() -> None:
    encoded = encode_options(TcpOptions(unknown=[(30, b"\x01\x02\x03")]))
    assert encoded == bytes((30, 5, 1, 2, 3, 0, 0, 0))
    decoded = decode_options(encoded)
    assert decoded.unknown == ((30, b"\x01\x02\x03"),)
    assert decoded.layout == (30, 0)


def test_empty_options_encode_to_nothing() -> None:
    assert encode_options(NO_OPTIONS) == b""
    assert encode_options(TcpOptions()) == b""
    assert decode_options(b"") is NO_OPTIONS


def test_layout_is_followed_and_round_trips() -> None:
    # FreeBSD's SYN order: mss, nop, wscale, sackOK, TS (with its nop,nop before TS).
    options = TcpOptions(mss=1460, wscale=6, sack_permitted=True, timestamps=(9, 0),
                         layout=(2, 1, 3, 4, 1, 1, 8))
    encoded = encode_options(options)
    assert encoded[:8] == bytes.fromhex("020405b4" "01030306")
    assert encoded[8:12] == bytes((4, 2, 1, 1))
    assert encoded[12:] == struct.pack("!BBII", 8, 10, 9, 0) + bytes(2)  # 22 octets + padding
    decoded = decode_options(encoded)
    # The two padding octets read back as EOL, which the layout then records.
    assert decoded == options and decoded.layout == (2, 1, 3, 4, 1, 1, 8, 0)
    assert encode_options(decoded) == encoded


def test_eol_stops_decoding_and_padding_is_not_kept() -> None:
    raw = bytes((1, 0, 2, 4))  # NOP, EOL, then bytes that would be MSS if read
    decoded = decode_options(raw)
    assert decoded.layout == (1, 0)
    assert decoded.mss is None
    assert encode_options(decoded) == bytes((1, 0, 0, 0))


def test_duplicate_option_first_wins_and_round_trips() -> None:
    raw = struct.pack("!BBHBBH", 2, 4, 1000, 2, 4, 2000)
    decoded = decode_options(raw)
    assert decoded.mss == 1000
    assert decoded.unknown == ((2, struct.pack("!H", 2000)),)
    assert decoded.layout == (2, 2)
    assert encode_options(decoded) == raw


def test_sack_blocks_decode() -> None:
    raw = bytes((1, 1, 5, 26)) + struct.pack("!6I", 1, 2, 3, 4, 5, 6)
    decoded = decode_options(raw)
    assert decoded.sack_blocks == (SackBlock(1, 2), SackBlock(3, 4), SackBlock(5, 6))
    assert all(type(block) is SackBlock for block in decoded.sack_blocks)


def test_established_timestamps_fast_path_equals_general_decoding() -> None:
    fast = decode_options(struct.pack("!BBBBII", 1, 1, 8, 10, 77, 88))
    slow = decode_options(struct.pack("!BBIIBB", 8, 10, 77, 88, 1, 1))
    assert fast == slow == TcpOptions(timestamps=Timestamps(77, 88))
    assert type(fast.timestamps) is Timestamps
    assert fast.layout == (1, 1, 8) and slow.layout == (8, 1, 1)


@settings(max_examples=300)
@given(tcp_options())
def test_encode_decode_round_trip(options: TcpOptions) -> None:
    encoded = encode_options(options)
    assert len(encoded) % 4 == 0 and len(encoded) <= 40
    decoded = decode_options(encoded)
    assert decoded == options
    if encoded and options.layout is not None and decoded.layout != options.layout:
        # Only zero padding may differ: it decodes as one trailing EOL.
        assert options.layout[-1:] != (0,)
        assert decoded.layout == options.layout + (0,)
    assert encode_options(decoded) == encoded


# -- encode errors ---------------------------------------------------------------------------


def test_options_beyond_40_octets_are_a_value_error() -> None:
    too_much = TcpOptions(mss=1460, timestamps=(1, 2), sack_blocks=[(i, i + 1) for i in range(4)])
    with pytest.raises(ValueError, match="more than the 40"):
        encode_options(too_much)


def test_layout_naming_a_kind_without_value() -> None:
    with pytest.raises(ValueError, match="lists kind 2, which has no value"):
        encode_options(TcpOptions(wscale=1, layout=(2, 1, 3)))


def test_layout_leaving_out_a_value() -> None:
    with pytest.raises(ValueError, match="omits kind 8 but timestamps is set"):
        encode_options(TcpOptions(mss=1, timestamps=(1, 1), layout=(2,)))
    with pytest.raises(ValueError, match="omits unknown option kinds"):
        encode_options(TcpOptions(unknown=[(99, b"")], layout=(1,)))


def test_layout_continuing_after_eol() -> None:
    with pytest.raises(ValueError, match="after EOL"):
        encode_options(TcpOptions(mss=1, layout=(0, 2)))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (TcpOptions(mss=70000), "mss=70000"),
        (TcpOptions(wscale=256), "wscale=256"),
        (TcpOptions(timestamps=(2**32, 0)), "tsval"),
        (TcpOptions(timestamps=(0, -1)), "tsecr"),
        (TcpOptions(sack_blocks=[(0, 2**32)]), "SACK right edge"),
    ],
)
def test_out_of_range_values_are_named(options: TcpOptions, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encode_options(options)


def test_bad_unknown_options() -> None:
    with pytest.raises(ValueError, match="not in 2..255"):
        encode_options(TcpOptions(unknown=[(1, b"")]))
    with pytest.raises(ValueError, match="at most 253"):
        encode_options(TcpOptions(unknown=[(99, bytes(254))]))


# -- decode errors: one test per path ---------------------------------------------------------


def test_option_length_octet_missing() -> None:
    with pytest.raises(MalformedPacket, match="kind 2 at offset 3: option length octet missing"):
        decode_options(bytes((1, 1, 1, 2)))


@pytest.mark.parametrize("length", [0, 1])
def test_option_length_below_two(length: int) -> None:
    with pytest.raises(MalformedPacket, match=f"option length {length} is below 2"):
        decode_options(bytes((99, length, 0, 0)))


def test_option_overrunning_the_options_field() -> None:
    with pytest.raises(MalformedPacket, match="length 6 overruns the 4-octet options field"):
        decode_options(bytes((99, 6, 0, 0)))


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (bytes((2, 3, 0, 0)), "MSS option length 3, expected 4"),
        (bytes((3, 4, 0, 0)), "window scale option length 4, expected 3"),
        (bytes((4, 3, 0, 0)), "SACK-permitted option length 3, expected 2"),
        (bytes((8, 8)) + bytes(6) + bytes(4), "timestamps option length 8, expected 10"),
    ],
)
def test_wrong_length_for_fixed_size_options(raw: bytes, name: str) -> None:
    with pytest.raises(MalformedPacket, match=name):
        decode_options(raw)


@pytest.mark.parametrize("length", [2, 9, 11, 17])
def test_sack_length_not_two_plus_eight_n(length: int) -> None:
    raw = bytes((5, length)) + bytes(max(0, length - 2))
    raw += bytes(-len(raw) % 4)
    with pytest.raises(MalformedPacket, match=f"SACK option length {length} is not 2 \\+ 8n"):
        decode_options(raw)


def test_layout_may_pad_with_eol_after_eol() -> None:
    # FreeBSD ends its SYN options with EOL padding: <mss 1460,sackOK,eol,eol>.
    opts = TcpOptions(mss=1460, sack_permitted=True, layout=(2, 4, 0, 0))
    assert encode_options(opts) == bytes([2, 4, 0x05, 0xB4, 4, 2, 0, 0])


def test_layout_rejects_an_option_after_eol() -> None:
    opts = TcpOptions(mss=1460, sack_permitted=True, layout=(2, 0, 4))
    with pytest.raises(ValueError, match="continues after EOL"):
        encode_options(opts)
