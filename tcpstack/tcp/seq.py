"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4, RFC 1982 serial numbers).

The engine keeps sequence numbers *unwrapped*: absolute integers that never wrap, so its data
structures compare with plain ``<``. Only the wire carries them modulo 2**32. :func:`unwrap`
maps a wire value back to the absolute number closest to a reference the engine trusts
(``snd_una`` for acknowledgements and SACK blocks, ``rcv_nxt`` for incoming data), and
:func:`wrap` is the way out.

The comparisons are for the places that still see wire values (the codec, the conformance
runner). They follow RFC 1982: ``a < b`` when ``b`` is less than 2**31 ahead of ``a``. At a
distance of exactly 2**31 the order is undefined; here neither ``a < b`` nor ``b < a`` holds
(Linux's ``before()`` would call both true).
"""

from __future__ import annotations

__all__ = [
    "SEQ_MOD",
    "SEQ_MASK",
    "SEQ_HALF",
    "seq_lt",
    "seq_le",
    "seq_gt",
    "seq_ge",
    "seq_add",
    "seq_sub",
    "wrap",
    "unwrap",
]

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = 1 << 31


def seq_sub(a: int, b: int) -> int:
    """The signed distance from ``b`` to ``a`` modulo 2**32, in ``(-2**31, 2**31]``."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d > SEQ_HALF else d


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes before ``b`` in sequence space."""
    d = (b - a) & SEQ_MASK
    return 0 < d < SEQ_HALF


def seq_le(a: int, b: int) -> bool:
    """``a`` comes before ``b`` or is ``b``."""
    return ((b - a) & SEQ_MASK) < SEQ_HALF


def seq_gt(a: int, b: int) -> bool:
    """``a`` comes after ``b``."""
    return seq_lt(b, a)


def seq_ge(a: int, b: int) -> bool:
    """``a`` comes after ``b`` or is ``b``."""
    return seq_le(b, a)


def seq_add(a: int, n: int) -> int:
    """``a + n`` on the wire (``n`` may be negative)."""
    return (a + n) & SEQ_MASK


def wrap(abs_seq: int) -> int:
    """The 32-bit wire value of an absolute sequence number."""
    return abs_seq & SEQ_MASK


def unwrap(wire_seq: int, reference: int) -> int:
    """The absolute number congruent to ``wire_seq`` modulo 2**32 that is closest to ``reference``.

    A value exactly 2**31 away resolves forward (above ``reference``). The result can be below
    zero when ``reference`` is near zero and ``wire_seq`` lies just behind it; callers treat that
    as "old", like any other value below their window.
    """
    if not 0 <= wire_seq <= SEQ_MASK:
        raise ValueError(f"wire sequence number out of range: {wire_seq!r}")
    return reference + seq_sub(wire_seq, reference & SEQ_MASK)
