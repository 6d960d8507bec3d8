"""Modular sequence arithmetic (RFC 9293 section 3.4, RFC 1982) and unwrapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.tcp.seq import (
    SEQ_HALF,
    SEQ_MOD,
    seq_add,
    seq_ge,
    seq_gt,
    seq_le,
    seq_lt,
    seq_sub,
    unwrap,
    wrap,
)

NEAR_WRAP = 0xFFFFFF00

seq32 = st.integers(min_value=0, max_value=SEQ_MOD - 1)


def test_comparisons_across_the_wrap() -> None:
    assert seq_lt(NEAR_WRAP, 0x10)
    assert not seq_lt(0x10, NEAR_WRAP)
    assert seq_gt(0x10, NEAR_WRAP)
    assert seq_le(NEAR_WRAP, 0x10) and seq_le(0x10, 0x10)
    assert seq_ge(0x10, NEAR_WRAP) and seq_ge(NEAR_WRAP, NEAR_WRAP)
    assert not seq_lt(NEAR_WRAP, NEAR_WRAP) and not seq_gt(0x10, 0x10)
    # Plain integer order would say the opposite: this is what the module exists for.
    assert NEAR_WRAP > 0x10


def test_half_space_apart_is_unordered() -> None:
    a, b = 5, 5 + SEQ_HALF
    assert not seq_lt(a, b) and not seq_lt(b, a)
    assert not seq_le(a, b) and not seq_le(b, a)
    assert seq_lt(a, b - 1) and seq_lt(b + 1, a)


def test_sub_is_signed_distance() -> None:
    assert seq_sub(0x10, NEAR_WRAP) == 0x110
    assert seq_sub(NEAR_WRAP, 0x10) == -0x110
    assert seq_sub(7, 7) == 0
    assert seq_sub(SEQ_HALF, 0) == SEQ_HALF  # the interval is (-2**31, 2**31]
    assert seq_sub(0, SEQ_HALF) == SEQ_HALF
    assert seq_sub(SEQ_HALF + 1, 0) == -(SEQ_HALF - 1)


def test_add_wraps() -> None:
    assert seq_add(NEAR_WRAP, 0x100) == 0
    assert seq_add(NEAR_WRAP, 0x110) == 0x10
    assert seq_add(0x10, -0x20) == SEQ_MOD - 0x10


def test_unwrap_near_the_wrap() -> None:
    ref = (3 << 32) + NEAR_WRAP  # absolute value in the fourth lap
    assert unwrap(0x10, ref) == (4 << 32) + 0x10  # just past the wrap: next lap
    assert unwrap(NEAR_WRAP - 5, (4 << 32) + 0x10) == (3 << 32) + NEAR_WRAP - 5  # old: previous lap
    assert unwrap(NEAR_WRAP, ref) == ref
    assert wrap((4 << 32) + 0x10) == 0x10


def test_unwrap_below_zero_and_tie() -> None:
    assert unwrap(SEQ_MOD - 1, 5) == -1  # just behind the very first sequence number
    assert unwrap(SEQ_HALF + 5, 5) == SEQ_HALF + 5  # exactly half away resolves forward


def test_unwrap_rejects_non_wire_values() -> None:
    with pytest.raises(ValueError):
        unwrap(SEQ_MOD, 0)
    with pytest.raises(ValueError):
        unwrap(-1, 0)


@settings(max_examples=300, derandomize=True)
@given(
    x=st.integers(min_value=0, max_value=1 << 64),
    d=st.integers(min_value=-(SEQ_HALF - 1), max_value=SEQ_HALF - 1),
)
def test_unwrap_inverts_wrap_within_half_space(x: int, d: int) -> None:
    assert unwrap(wrap(x), x + d) == x


@settings(max_examples=300, derandomize=True)
@given(x=st.integers(min_value=0, max_value=1 << 64), d=st.integers(min_value=1, max_value=SEQ_HALF - 1))
def test_wire_order_matches_absolute_order(x: int, d: int) -> None:
    a, b = wrap(x), wrap(x + d)
    assert seq_lt(a, b) and seq_le(a, b) and seq_gt(b, a) and seq_ge(b, a)
    assert not seq_lt(b, a) and not seq_ge(a, b)
    assert seq_sub(b, a) == d and seq_add(a, d) == b


@settings(max_examples=300, derandomize=True)
@given(a=seq32, b=seq32)
def test_order_is_antisymmetric(a: int, b: int) -> None:
    assert not (seq_lt(a, b) and seq_lt(b, a))
    assert seq_le(a, b) == (seq_lt(a, b) or a == b)
    assert seq_sub(a, b) in range(-(SEQ_HALF - 1), SEQ_HALF + 1)
    assert seq_add(b, seq_sub(a, b)) == a
