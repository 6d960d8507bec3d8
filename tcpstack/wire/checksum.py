"""The internet checksum (RFC 1071) and its incremental update (RFC 1624).

The 16-bit one's complement sum of a buffer is congruent, modulo 2**16 - 1, to the buffer read as
one big-endian integer, because 2**16 == 1 (mod 2**16 - 1): every 16-bit word contributes its own
value whatever its position. So the sum is ``int.from_bytes`` (one C call) followed by a reduction
modulo 65535, instead of a Python loop over words. Reducing a 1460-byte integer with ``%`` alone
is slower than first folding it in halves (``hi + lo`` on a 16-bit aligned split keeps the value
congruent), so large buffers are folded down to about 512 bytes before the final ``%``.

One's complement arithmetic has two zeros: a sum of data that is not all zero is never +0
(0x0000) but may be -0 (0xFFFF). :func:`ones_complement_sum` reproduces that exactly, so it
agrees with the word-by-word end-around-carry loop of RFC 1071 on every input.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "ones_complement_sum",
    "internet_checksum",
    "pseudo_header_sum",
    "checksum_adjust",
    "sum_congruent",
    "checksum_of_sum",
    "sum_verifies",
]

_FOLD_ABOVE_BITS = 4096
_unpack_ipv4 = struct.Struct("!I").unpack


def sum_congruent(data: bytes | bytearray | memoryview) -> int:
    """A non-negative integer congruent (mod 65535) to the one's complement sum of ``data``.

    It is zero only if ``data`` is all zero bytes. An odd-length buffer is summed as if padded
    with one zero byte (RFC 1071 section 4.1). This is the building block of the codec: partial
    results of several buffers (pseudo-header, header, payload) simply add up.
    """
    s = int.from_bytes(data, "big")
    if len(data) & 1:
        s <<= 8
    bits = s.bit_length()
    while bits > _FOLD_ABOVE_BITS:
        half = ((bits + 31) >> 5) << 4  # a multiple of 16 bits, so words are not split
        s = (s >> half) + (s & ((1 << half) - 1))
        bits = s.bit_length()
    return s


def _fold(s: int) -> int:
    """Reduce a non-negative congruent sum to the 16-bit one's complement sum (0..0xFFFF)."""
    if s == 0:
        return 0
    return s % 0xFFFF or 0xFFFF  # a non-zero sum is -0 (0xFFFF), never +0


def checksum_of_sum(s: int) -> int:
    """The checksum field for a congruent sum ``s`` of everything it covers (field zeroed)."""
    return 0xFFFF if s == 0 else -s % 0xFFFF


def sum_verifies(s: int) -> bool:
    """Whether a congruent sum over data that includes its checksum field is valid (-0)."""
    return s != 0 and s % 0xFFFF == 0


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's complement sum of ``data`` plus ``initial`` (RFC 1071)."""
    if initial < 0:
        raise ValueError(f"initial sum must be non-negative, got {initial}")
    return _fold(sum_congruent(data) + initial)


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The internet checksum of ``data``: the one's complement of its one's complement sum.

    ``initial`` is a partial sum to chain in, typically :func:`pseudo_header_sum`. Summing a
    buffer that already holds a correct checksum gives 0.
    """
    return 0xFFFF - ones_complement_sum(data, initial)


def _address_int(address: str | int) -> int:
    if isinstance(address, int):
        if not 0 <= address <= 0xFFFFFFFF:
            raise ValueError(f"IPv4 address out of range: {address}")
        return address
    try:
        return int(_unpack_ipv4(socket.inet_aton(address))[0])
    except OSError:
        raise ValueError(f"not a dotted-quad IPv4 address: {address!r}") from None


def pseudo_header_sum(src: str | int, dst: str | int, proto: int, length: int) -> int:
    """The folded one's complement sum of the IPv4 pseudo-header (RFC 9293 section 3.1).

    ``length`` is the TCP (or UDP) length: header plus data, without the IP header.
    """
    if not 0 <= proto <= 0xFF:
        raise ValueError(f"protocol out of range: {proto}")
    if not 0 <= length <= 0xFFFF:
        raise ValueError(f"length out of range: {length}")
    return _fold(_address_int(src) + _address_int(dst) + proto + length)


def checksum_adjust(checksum: int, old: int, new: int) -> int:
    """Update a checksum after one 16-bit word changed from ``old`` to ``new``.

    RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``: unlike eqn. 2 of RFC 1141 it never produces
    +0 (0x0000) where a full recomputation would give -0 (0xFFFF) as the folded sum.
    """
    for name, value in (("checksum", checksum), ("old", old), ("new", new)):
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{name} must be a 16-bit value, got {value}")
    s = (0xFFFF - checksum) + (0xFFFF - old) + new
    return 0xFFFF - _fold(s)
