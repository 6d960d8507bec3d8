"""Out-of-order reassembly, bounds, SACK block order (RFC 2018) and D-SACK ranges (RFC 2883)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.tcp.reassembly import AddResult, ReassemblyQueue

BASE = 0xFFFFFF00  # absolute sequence numbers run past 2**32 without wrapping


def check_invariants(q: ReassemblyQueue, rcv_nxt: int) -> None:
    ranges = q.ranges
    for (s, e) in ranges:
        assert rcv_nxt < s < e
    for (_, e1), (s2, _) in zip(ranges, ranges[1:], strict=False):
        assert e1 < s2  # disjoint and not adjacent: adjacent ranges are coalesced
    assert q.bytes_held == sum(e - s for s, e in ranges)
    assert q.bytes_held <= q.max_bytes
    assert len(ranges) <= q.max_ranges


class Receiver:
    """The engine's side of the contract: in-order data is delivered directly, the rest queued."""

    def __init__(self, q: ReassemblyQueue, rcv_nxt: int) -> None:
        self.q = q
        self.rcv_nxt = rcv_nxt
        self.out = bytearray()

    def segment(self, start: int, data: bytes) -> AddResult | None:
        end = start + len(data)
        if start <= self.rcv_nxt < end:
            self.out += data[self.rcv_nxt - start :]
            self.rcv_nxt = end
            more = self.q.pop_ready(self.rcv_nxt)
            self.out += more
            self.rcv_nxt += len(more)
            return None
        if start > self.rcv_nxt:
            return self.q.add(start, data, self.rcv_nxt)
        return None


def segmentation(stream: bytes, rng: random.Random) -> list[tuple[int, bytes]]:
    """Random segments covering the stream, with overlaps and exact duplicates, shuffled."""
    segs: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 40)
        back = rng.randint(0, min(pos, 15)) if rng.random() < 0.3 else 0
        start = pos - back
        segs.append((start, stream[start : pos + n]))
        pos += n
    segs += rng.sample(segs, k=len(segs) // 4)  # duplicates
    rng.shuffle(segs)
    return segs


@settings(max_examples=150, derandomize=True)
@given(seed=st.integers(min_value=0, max_value=2**32), size=st.integers(min_value=1, max_value=600))
def test_random_segmentations_reassemble_byte_for_byte(seed: int, size: int) -> None:
    rng = random.Random(seed)
    stream = rng.randbytes(size)
    q = ReassemblyQueue(max_bytes=1 << 20)
    rx = Receiver(q, BASE)
    for off, data in segmentation(stream, rng):
        rx.segment(BASE + off, data)
        check_invariants(q, rx.rcv_nxt)
    assert bytes(rx.out) == stream
    assert q.bytes_held == 0 and q.ranges == []
    assert q.dropped_bytes == 0


@settings(max_examples=150, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    max_bytes=st.integers(min_value=0, max_value=200),
    max_ranges=st.integers(min_value=1, max_value=5),
)
def test_bounds_hold_and_held_bytes_stay_correct(seed: int, max_bytes: int, max_ranges: int) -> None:
    rng = random.Random(seed)
    stream = rng.randbytes(500)
    q = ReassemblyQueue(max_bytes=max_bytes, max_ranges=max_ranges)
    rcv_nxt = BASE
    dropped = 0
    for off, data in segmentation(stream, rng):
        if off + len(data) <= 0 or off == 0:
            continue  # keep the first byte missing: everything is out of order
        before = q.ranges
        res = q.add(BASE + off, data, rcv_nxt)
        dropped += res.dropped
        check_invariants(q, rcv_nxt)
        if res.dropped == 0:
            # Nothing discarded: every byte held before is still held.
            for s, e in before:
                assert any(s2 <= s and e <= e2 for s2, e2 in q.ranges)
    assert q.dropped_bytes == dropped
    # Whatever survived is the right bytes: fill each hole in order and compare what pops out.
    while q.ranges:
        start, end = q.ranges[0]
        rcv_nxt = start
        assert q.pop_ready(rcv_nxt) == stream[start - BASE : end - BASE]


def test_held_bytes_win_over_overlapping_arrivals() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    assert q.add(110, b"A" * 10, 100) == AddResult(10, None, 0)
    res = q.add(105, b"B" * 20, 100)  # covers [105, 125): [110, 120) already held
    assert res == AddResult(10, (110, 120), 0)
    assert q.ranges == [(105, 125)]
    assert q.pop_ready(100) == b""
    assert q.pop_ready(105) == b"B" * 5 + b"A" * 10 + b"B" * 5


def test_fill_between_two_ranges_coalesces() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    q.add(110, b"a" * 10, 100)
    q.add(130, b"c" * 10, 100)
    assert q.ranges == [(110, 120), (130, 140)]
    res = q.add(115, b"x" * 20, 100)  # [115, 135): 5 held, 10 new, 5 held
    assert res.accepted == 10 and res.duplicate == (115, 120)
    assert q.ranges == [(110, 140)]
    assert q.pop_ready(110) == b"a" * 10 + b"x" * 10 + b"c" * 10


def test_adjacent_ranges_coalesce() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    q.add(120, b"b" * 10, 100)
    q.add(110, b"a" * 10, 100)
    q.add(130, b"c" * 10, 100)
    assert q.ranges == [(110, 140)]
    assert q.pop_ready(110) == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_pop_ready_discards_below_rcv_nxt_and_trims() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    q.add(110, bytes(range(10)), 100)
    q.add(130, bytes(range(30, 40)), 100)
    # The engine delivered [100, 135) from a retransmission that covered both ranges.
    assert q.pop_ready(135) == bytes(range(35, 40))
    assert q.bytes_held == 0 and q.ranges == []
    q.add(150, b"xyz", 140)
    assert q.pop_ready(151) == b"yz"


def test_data_below_rcv_nxt_is_a_duplicate() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    assert q.add(90, b"z" * 5, 100) == AddResult(0, (90, 95), 0)
    res = q.add(95, b"y" * 10, 100)  # straddles rcv_nxt: [95, 100) old, [100, 105) new
    assert res == AddResult(5, (95, 100), 0)
    assert q.ranges == [(100, 105)]
    assert q.add(100, b"", 100) == AddResult(0, None, 0)


def test_dsack_reports_the_lowest_duplicate_run() -> None:
    q = ReassemblyQueue(max_bytes=1000)
    q.add(110, b"a" * 10, 100)
    q.add(130, b"b" * 10, 100)
    assert q.add(112, b"a" * 3, 100) == AddResult(0, (112, 115), 0)
    res = q.add(105, b"q" * 40, 100)
    assert res.duplicate == (110, 120)
    assert res.accepted == 20


def test_max_bytes_keeps_data_nearest_rcv_nxt() -> None:
    q = ReassemblyQueue(max_bytes=30)
    q.add(200, b"h" * 20, 100)
    res = q.add(150, b"l" * 20, 100)  # lower data arrives: the highest bytes make room
    assert res.accepted == 20 and res.dropped == 10
    assert q.ranges == [(150, 170), (200, 210)]
    res = q.add(300, b"x" * 10, 100)  # higher than everything held, no room at all
    assert res == AddResult(0, None, 10)
    assert q.ranges == [(150, 170), (200, 210)]
    res = q.add(170, b"m" * 20, 100)  # fills [170, 190): evicts the rest of the high range
    assert res.accepted == 10 and res.dropped == 20
    assert q.ranges == [(150, 180)]
    assert q.dropped_bytes == 40 and q.dropped_segments == 3
    assert q.bytes_held == 30
    assert q.pop_ready(150) == b"l" * 20 + b"m" * 10


def test_max_ranges_keeps_lowest_ranges() -> None:
    q = ReassemblyQueue(max_bytes=10_000, max_ranges=2)
    q.add(200, b"a", 100)
    q.add(300, b"b", 100)
    res = q.add(400, b"c", 100)  # would be a third range, and the highest: dropped
    assert res == AddResult(0, None, 1)
    res = q.add(150, b"d", 100)  # lowest: the highest range goes instead
    assert res == AddResult(1, None, 1)
    assert q.ranges == [(150, 151), (200, 201)]
    assert q.ooo_packets == 3  # the add that stored nothing does not count
    assert q.dropped_segments == 2


def test_zero_capacity_drops_everything() -> None:
    q = ReassemblyQueue(max_bytes=0)
    assert q.add(200, b"abc", 100) == AddResult(0, None, 3)
    assert q.ranges == [] and q.dropped_bytes == 3


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        ReassemblyQueue(max_bytes=-1)
    with pytest.raises(ValueError):
        ReassemblyQueue(max_bytes=10, max_ranges=0)


def test_sack_blocks_most_recent_first() -> None:
    q = ReassemblyQueue(max_bytes=100_000)
    rcv_nxt = 1000
    q.add(2000, b"x" * 100, rcv_nxt)
    assert q.sack_blocks(3) == [(2000, 2100)]
    q.add(3000, b"x" * 100, rcv_nxt)
    assert q.sack_blocks(3) == [(3000, 3100), (2000, 2100)]
    q.add(4000, b"x" * 100, rcv_nxt)
    assert q.sack_blocks(3) == [(4000, 4100), (3000, 3100), (2000, 2100)]
    q.add(2100, b"x" * 100, rcv_nxt)  # extends the oldest range: it becomes the first block
    assert q.sack_blocks(3) == [(2000, 2200), (4000, 4100), (3000, 3100)]
    q.add(5000, b"x" * 100, rcv_nxt)  # four ranges, three blocks: the least recent is left out
    assert q.sack_blocks(3) == [(5000, 5100), (2000, 2200), (4000, 4100)]
    assert q.sack_blocks(4) == [(5000, 5100), (2000, 2200), (4000, 4100), (3000, 3100)]
    # A duplicate also triggers an ACK: the range holding it is reported first (RFC 2018 s4).
    res = q.add(3000, b"x" * 50, rcv_nxt)
    assert res.duplicate == (3000, 3050)
    assert q.sack_blocks(3) == [(3000, 3100), (5000, 5100), (2000, 2200)]
    # Filling between two ranges merges them into one block, reported first.
    q.add(4100, b"x" * 900, rcv_nxt)
    assert q.sack_blocks(3) == [(4000, 5100), (3000, 3100), (2000, 2200)]
    assert q.sack_blocks(0) == []


def test_long_in_order_run_behind_a_hole_is_linear() -> None:
    # 20k segments appended to one range behind a hole: held data must not be recopied on
    # every arrival (a bytes-concatenating queue would copy ~290 GB here and never finish).
    q = ReassemblyQueue(max_bytes=1 << 30)
    seg = bytes(1460)
    for i in range(20_000):
        q.add(1 + i * 1460, seg, 0)
    assert q.ranges == [(1, 1 + 20_000 * 1460)]
    assert len(q.pop_ready(1)) == 20_000 * 1460


def test_queues_that_never_held_data_share_no_state_with_those_that_did() -> None:
    # Empty queues share one empty range list until their first arrival; an arrival at one
    # queue must never show up at another.
    first, second = ReassemblyQueue(max_bytes=1000), ReassemblyQueue(max_bytes=1000)
    assert first.add(110, b"x" * 10, 100).accepted == 10
    assert first.ranges == [(110, 120)] and second.ranges == [] and not second
    assert second.pop_ready(100) == b"" and second.sack_blocks(4) == []
    second.clear()
    third = ReassemblyQueue(max_bytes=1000)
    assert len(third) == 0 and third.bytes_held == 0
    assert first.pop_ready(110) == b"x" * 10 and not first
    assert third.add(200, b"y", 150).accepted == 1 and len(first) == 0 and len(second) == 0
