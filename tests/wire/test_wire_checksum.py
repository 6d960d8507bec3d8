"""The internet checksum against the RFC examples and a word-by-word reference."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.wire import checksum_adjust, internet_checksum, ones_complement_sum, pseudo_header_sum
from tcpstack.wire.checksum import checksum_of_sum, sum_congruent, sum_verifies


def naive_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_section3_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (big-endian order).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D
    # With the checksum appended the sum is -0, i.e. the checksum of the whole is 0.
    assert internet_checksum(data + struct.pack("!H", 0x220D)) == 0


def test_rfc1624_section4_incremental_update() -> None:
    # RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 changes to m' = 0x3285.
    # Eqn. 3 gives 0x0000, which is what recomputation from scratch gives; eqn. 2 gave 0xFFFF.
    assert checksum_adjust(0xDD2F, 0x5555, 0x3285) == 0x0000
    # A concrete buffer with that checksum and word: the update equals a recomputation.
    other = 0xDD2F ^ 0xFFFF  # ~HC is the sum of all words, m included
    rest = (other - 0x5555) % 0xFFFF  # the words other than m sum to this
    before = struct.pack("!HH", rest, 0x5555)
    after = struct.pack("!HH", rest, 0x3285)
    assert internet_checksum(before) == 0xDD2F
    assert internet_checksum(after) == checksum_adjust(0xDD2F, 0x5555, 0x3285)


@settings(max_examples=300, derandomize=True)
@given(st.binary(min_size=0, max_size=3000), st.integers(0, 0xFFFF))
def test_matches_naive_reference(data: bytes, initial: int) -> None:
    assert ones_complement_sum(data, initial) == naive_sum(data, initial)
    assert internet_checksum(data, initial) == (~naive_sum(data, initial)) & 0xFFFF


@pytest.mark.parametrize("length", [0, 1, 2, 3, 511, 512, 513, 1459, 1460, 9001, 65535])
def test_lengths_around_fold_boundaries(length: int) -> None:
    rng = random.Random(length)
    data = bytes(rng.getrandbits(8) for _ in range(length))
    assert ones_complement_sum(data) == naive_sum(data)
    ones = b"\xff" * length
    assert ones_complement_sum(ones) == naive_sum(ones)
    if length % 2 == 0:  # 0xFFFF words sum to -0, never +0; only a zero buffer sums to +0
        assert ones_complement_sum(ones) == (0xFFFF if length else 0)
    assert ones_complement_sum(bytes(length)) == 0


def test_odd_length_pads_with_a_zero_byte() -> None:
    assert ones_complement_sum(b"\x12") == 0x1200
    assert ones_complement_sum(b"\x12\x34\x56") == 0x1234 + 0x5600


def test_accepts_bytearray_and_memoryview() -> None:
    data = bytes(range(256)) * 3
    expected = internet_checksum(data)
    assert internet_checksum(bytearray(data)) == expected
    assert internet_checksum(memoryview(data)) == expected


def test_chaining_a_partial_sum_equals_summing_the_concatenation() -> None:
    rng = random.Random(7)
    for _ in range(50):
        a = rng.randbytes(rng.randrange(0, 100) * 2)  # even: word-aligned split
        b = rng.randbytes(rng.randrange(0, 100))
        assert internet_checksum(b, ones_complement_sum(a)) == internet_checksum(a + b)


def test_pseudo_header_sum() -> None:
    # 192.0.2.1 -> 198.51.100.2, TCP, 40 octets: words c000 0201 c633 6402 0006 0028
    words = [0xC000, 0x0201, 0xC633, 0x6402, 0x0006, 0x0028]
    expected = naive_sum(struct.pack("!6H", *words))
    assert pseudo_header_sum("192.0.2.1", "198.51.100.2", 6, 40) == expected
    assert pseudo_header_sum(0xC0000201, 0xC6336402, 6, 40) == expected


def test_pseudo_header_sum_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dotted-quad"):
        pseudo_header_sum("300.1.1.1", "1.1.1.1", 6, 20)
    with pytest.raises(ValueError, match="protocol"):
        pseudo_header_sum("1.1.1.1", "1.1.1.1", 256, 20)
    with pytest.raises(ValueError, match="length"):
        pseudo_header_sum("1.1.1.1", "1.1.1.1", 6, 70000)


def test_checksum_adjust_matches_recomputation_on_random_data() -> None:
    rng = random.Random(1624)
    for _ in range(200):
        words = [rng.getrandbits(16) for _ in range(rng.randrange(1, 30))]
        index = rng.randrange(len(words))
        new = rng.getrandbits(16)
        before = internet_checksum(struct.pack(f"!{len(words)}H", *words))
        old = words[index]
        words[index] = new
        after = internet_checksum(struct.pack(f"!{len(words)}H", *words))
        assert checksum_adjust(before, old, new) == after


def test_checksum_adjust_rejects_wide_values() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        checksum_adjust(0x10000, 0, 0)


def test_negative_initial_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        ones_complement_sum(b"ab", -1)


def test_codec_helpers_agree_with_the_public_functions() -> None:
    rng = random.Random(3)
    for _ in range(100):
        data = rng.randbytes(rng.randrange(0, 200))
        field = checksum_of_sum(sum_congruent(data))
        assert field == internet_checksum(data)
        padded = data + b"\x00" if len(data) % 2 else data
        assert sum_verifies(sum_congruent(padded + struct.pack("!H", field)))
    # The all-zero buffer: checksum 0xFFFF (~+0), and a zero checksum over zeros does not verify.
    assert checksum_of_sum(0) == 0xFFFF
    assert not sum_verifies(0)
