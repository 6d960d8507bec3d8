"""The sender's SACK scoreboard: RFC 6675 IsLost / NextSeg / SetPipe, RFC 2883 D-SACK, Karn."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.tcp.rate import RateSampler
from tcpstack.tcp.scoreboard import Scoreboard, SentSegment

MSS = 1000
ISS = (1 << 32) - 3 * MSS  # absolute numbers: the window straddles the 32-bit wrap


def seg(k: int) -> int:
    """Absolute start of the k-th segment (1-based, as the RFC 6675 examples count)."""
    return ISS + (k - 1) * MSS


def block(first: int, last: int) -> tuple[int, int]:
    """SACK block covering segments first..last inclusive."""
    return (seg(first), seg(last + 1))


def send(sb: Scoreboard, rate: RateSampler, n: int, now: float = 0.0, gap: float = 0.0) -> None:
    start = sb.snd_nxt if sb.snd_nxt is not None else ISS
    for i in range(n):
        sb.on_sent(start + i * MSS, start + (i + 1) * MSS, now + i * gap, retransmit=False, rate=rate)


def ten_segments() -> tuple[Scoreboard, RateSampler]:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, 10)
    return sb, rate


def test_new_data_is_appended_in_order() -> None:
    sb, _ = ten_segments()
    assert len(sb) == 10
    assert [(r.start, r.end) for r in sb] == [(seg(k), seg(k + 1)) for k in range(1, 11)]
    assert sb.snd_una == seg(1) and sb.snd_nxt == seg(11)
    assert sb.bytes_outstanding == 10 * MSS == sb.pipe(MSS)


def test_rfc6675_sack_3_to_9_marks_1_and_2_lost() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(seg(1), [block(3, 9)], 1.0, MSS)
    assert res.acked_bytes == 0 and res.sacked_bytes == 7 * MSS
    assert [r.start for r in res.newly_sacked] == [seg(k) for k in range(3, 10)]
    assert res.highest_sacked == seg(10)
    assert sb.is_lost(seg(1), MSS) and sb.is_lost(seg(2), MSS)
    assert not sb.is_lost(seg(10), MSS)  # nothing SACKed above it
    # SetPipe counts IsLost whether or not the marks have been applied yet.
    assert sb.pipe(MSS) == 1 * MSS
    assert sb.update_lost(MSS) == 2
    assert sb.update_lost(MSS) == 0  # marks are sticky: nothing new
    assert sb.lost_segments == 2 and sb.sacked_segments == 7
    assert sb.pipe(MSS) == 1 * MSS == sb.bytes_in_flight
    # NextSeg rule 1: the lost segments, in order, as they get retransmitted.
    assert sb.next_seg(seg(11), MSS, rwnd_allows_new=True) == block(1, 1)
    sb.on_sent(*block(1, 1), 1.0, retransmit=True, rate=RateSampler())
    assert sb.pipe(MSS) == 2 * MSS  # a lost segment retransmitted counts once again
    assert sb.retrans_out == 1
    assert sb.next_seg(seg(11), MSS, rwnd_allows_new=True) == block(2, 2)
    sb.on_sent(*block(2, 2), 1.0, retransmit=True, rate=RateSampler())
    assert sb.pipe(MSS) == 3 * MSS
    # Rule 2: new data when the window allows; rule 3 has nothing (segment 10 is above the
    # highest SACKed byte), so without new data there is nothing to send.
    assert sb.next_seg(seg(11), MSS, rwnd_allows_new=True) == (seg(11), seg(11) + MSS)
    assert sb.next_seg(seg(11), MSS, rwnd_allows_new=False) is None


def test_islost_needs_dupthresh_segments_above() -> None:
    sb, _ = ten_segments()
    sb.on_ack(seg(1), [block(3, 4)], 1.0, MSS)
    # Two SACKed segments (2 * MSS bytes, not more than (3 - 1) * MSS): not enough.
    assert not sb.is_lost(seg(1), MSS)
    assert sb.update_lost(MSS) == 0
    assert sb.pipe(MSS) == 8 * MSS
    sb.on_ack(seg(1), [block(3, 4), block(6, 6)], 1.1, MSS)  # third, discontiguous
    assert sb.is_lost(seg(1), MSS) and sb.is_lost(seg(2), MSS)
    assert not sb.is_lost(seg(5), MSS)  # only one SACKed segment above 5
    assert sb.update_lost(MSS) == 2
    assert sb.pipe(MSS) == 5 * MSS  # segments 5 and 7..10
    # NextSeg rule 3: segment 5 is below the highest SACK but not lost; after 1 and 2 it is
    # offered when there is no new data to send.
    r = RateSampler()
    for k in (1, 2):
        assert sb.next_seg(seg(11), MSS, False) == block(k, k)
        sb.on_sent(*block(k, k), 1.2, retransmit=True, rate=r)
    assert sb.next_seg(seg(11), MSS, False) == block(5, 5)
    sb.on_sent(*block(5, 5), 1.2, retransmit=True, rate=r)
    assert sb.pipe(MSS) == 8 * MSS  # 1, 2 retransmitted; 5 twice (original + copy); 7..10
    assert sb.next_seg(seg(11), MSS, False) is None


def test_dupthresh_is_configurable() -> None:
    sb, rate = Scoreboard(dupthresh=1), RateSampler()
    send(sb, rate, 4)
    sb.on_ack(seg(1), [block(3, 3)], 1.0, MSS)
    assert sb.update_lost(MSS) == 2


def test_cumulative_ack_removes_records() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(seg(3), [], 1.0, MSS)
    assert res.acked_bytes == 2 * MSS and res.delivered_bytes == 2 * MSS
    assert [r.start for r in res.newly_acked] == [seg(1), seg(2)]
    assert len(sb) == 8 and sb.snd_una == seg(3)
    # A partial ACK splits the record: the acknowledged part leaves.
    res = sb.on_ack(seg(3) + 400, [], 1.1, MSS)
    assert res.acked_bytes == 400
    first = sb.first()
    assert first is not None and first.start == seg(3) + 400
    assert sb.bytes_outstanding == 8 * MSS - 400
    # An old ACK changes nothing.
    res = sb.on_ack(seg(2), [], 1.2, MSS)
    assert res.acked_bytes == 0 and len(sb) == 8
    res = sb.on_ack(seg(11), [], 1.3, MSS)
    assert res.acked_bytes == 8 * MSS - 400 and len(sb) == 0 and sb.first() is None
    assert sb.snd_una == seg(11) and sb.pipe(MSS) == 0


def test_ack_beyond_snd_nxt_is_an_error() -> None:
    sb, _ = ten_segments()
    with pytest.raises(ValueError):
        sb.on_ack(seg(12), [], 1.0, MSS)


def test_sacked_then_cumulatively_acked_is_delivered_once() -> None:
    sb, _ = ten_segments()
    sb.on_ack(seg(1), [block(2, 3)], 1.0, MSS)
    res = sb.on_ack(seg(4), [], 1.1, MSS)
    assert res.acked_bytes == 3 * MSS
    assert res.delivered_bytes == 1 * MSS  # only segment 1 is news
    assert sb.sacked_segments == 0 and sb.highest_sacked is None


def test_dsack_below_cumulative_ack() -> None:
    sb, _ = ten_segments()
    sb.on_ack(seg(3), [], 1.0, MSS)
    res = sb.on_ack(seg(3), [block(1, 1), block(5, 5)], 1.1, MSS)
    assert res.dsack and res.dsack_range == block(1, 1)
    assert [r.start for r in res.newly_sacked] == [seg(5)]  # the second block is still a SACK


def test_dsack_inside_second_block() -> None:
    sb, _ = ten_segments()
    sb.on_ack(seg(1), [block(4, 6)], 1.0, MSS)
    res = sb.on_ack(seg(1), [block(5, 5), block(4, 6)], 1.1, MSS)
    assert res.dsack and res.dsack_range == block(5, 5)
    assert res.sacked_bytes == 0


def test_ordinary_sack_is_not_dsack() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(seg(1), [block(5, 5), block(3, 3)], 1.0, MSS)
    assert not res.dsack and res.dsack_range is None
    assert res.sacked_bytes == 2 * MSS


def test_invalid_sack_blocks_are_ignored() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(
        seg(3),
        [block(5, 5), (seg(9), seg(12)), (seg(3), seg(4)), (seg(7), seg(6)), (seg(2), seg(4))],
        1.0,
        MSS,
    )
    # Beyond snd_nxt, starting at the cumulative ACK, reversed: all ignored (RFC 2018 sanity;
    # a first block would have been taken as D-SACK, this one is not first).
    assert [r.start for r in res.newly_sacked] == [seg(5)]
    assert sb.sacked_segments == 1


def test_partial_sack_splits_record() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(seg(1), [(seg(2) + 300, seg(3))], 1.0, MSS)
    assert res.sacked_bytes == 700
    assert [(r.start, r.end, r.sacked) for r in sb][:3] == [
        (seg(1), seg(2), False), (seg(2), seg(2) + 300, False), (seg(2) + 300, seg(3), True),
    ]
    assert sb.pipe(MSS) == 10 * MSS - 700


def test_karn_rtt_sample_ignores_retransmitted_segments() -> None:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, 3, now=0.0, gap=0.01)  # sent at 0.00, 0.01, 0.02
    sb.on_sent(*block(1, 1), 0.5, retransmit=True, rate=rate)
    res = sb.on_ack(seg(2), [], 0.6, MSS)
    assert res.acked_bytes == MSS and res.rtt_sample is None  # ambiguous: Karn
    res = sb.on_ack(seg(4), [], 0.7, MSS)
    assert res.rtt_sample == pytest.approx(0.7 - 0.02)  # the most recently sent of 2 and 3


def test_rtt_sample_from_sacked_segment() -> None:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, 4, now=0.0, gap=0.01)
    res = sb.on_ack(seg(1), [block(2, 3)], 0.3, MSS)
    assert res.rtt_sample == pytest.approx(0.3 - 0.02)


def test_partial_retransmission_splits_records() -> None:
    sb, rate = ten_segments()
    first = sb.on_sent(seg(1), seg(1) + 400, 1.0, retransmit=True, rate=rate)  # smaller MSS now
    assert (first.start, first.end, first.retransmits) == (seg(1), seg(1) + 400, 1)
    recs = list(sb)
    assert len(recs) == 11
    assert (recs[1].start, recs[1].end, recs[1].retransmits) == (seg(1) + 400, seg(2), 0)
    assert sb.retrans_out == 1 and sb.retrans_bytes == 400
    # The original part is acked first: a clean RTT sample (Karn), from its first send.
    res = sb.on_ack(seg(2), [], 1.5, MSS)
    assert res.rtt_sample == pytest.approx(1.5)
    # A retransmission across a record boundary updates both records.
    sb.on_sent(seg(2) + 500, seg(3) + 500, 2.0, retransmit=True, rate=rate)
    assert [(r.start, r.end, r.retransmits) for r in sb][:4] == [
        (seg(2), seg(2) + 500, 0),
        (seg(2) + 500, seg(3), 1),
        (seg(3), seg(3) + 500, 1),
        (seg(3) + 500, seg(4), 0),
    ]


def test_on_sent_rejects_bad_ranges() -> None:
    sb, rate = ten_segments()
    with pytest.raises(ValueError):
        sb.on_sent(seg(12), seg(13), 1.0, retransmit=False, rate=rate)  # a gap after snd_nxt
    with pytest.raises(ValueError):
        sb.on_sent(seg(10), seg(12), 1.0, retransmit=True, rate=rate)  # beyond snd_nxt
    with pytest.raises(ValueError):
        sb.on_sent(seg(2), seg(2), 1.0, retransmit=False, rate=rate)


def test_syn_and_fin_stay_at_their_ends_when_split() -> None:
    sb, rate = Scoreboard(), RateSampler()
    sb.on_sent(ISS, ISS + 1, 0.0, retransmit=False, rate=rate, syn=True)
    sb.on_ack(ISS + 1, [], 0.1, MSS)
    sb.on_sent(ISS + 1, ISS + 1 + 2 * MSS + 1, 0.2, retransmit=False, rate=rate, fin=True)
    sb.on_sent(ISS + 1, ISS + 1 + MSS, 0.3, retransmit=True, rate=rate)
    recs = list(sb)
    assert [(r.fin, r.end) for r in recs] == [(False, ISS + 1 + MSS), (True, ISS + 2 + 2 * MSS)]


def test_rto_marks_everything_unsacked_lost() -> None:
    sb, rate = ten_segments()
    sb.on_ack(seg(1), [block(4, 4)], 1.0, MSS)
    sb.on_sent(*block(1, 1), 1.1, retransmit=True, rate=rate)
    sb.mark_all_lost()
    assert sb.lost_segments == 9 and sb.sacked_segments == 1
    assert sb.retrans_out == 0  # RFC 6675 5.1: retransmissions are presumed lost too
    assert sb.pipe(MSS) == 0
    # Go-back-N over the holes, skipping what the receiver holds.
    order = []
    while (nxt := sb.next_seg(seg(11), MSS, False)) is not None:
        order.append(nxt)
        sb.on_sent(*nxt, 2.0, retransmit=True, rate=rate)
    assert order == [block(k, k) for k in (1, 2, 3, 5, 6, 7, 8, 9, 10)]
    assert sb.pipe(MSS) == 9 * MSS


def test_rto_with_reneging_forgets_sack() -> None:
    sb, _ = ten_segments()
    sb.on_ack(seg(1), [block(4, 4)], 1.0, MSS)
    sb.mark_all_lost(clear_sacked=True)
    assert sb.sacked_segments == 0 and sb.lost_segments == 10 and sb.highest_sacked is None
    # The same block reported again is SACK news again (the SACK cache was reset).
    res = sb.on_ack(seg(1), [block(4, 4)], 1.1, MSS)
    assert res.sacked_bytes == MSS


def test_reordering_detected_for_never_retransmitted_segments() -> None:
    sb, _ = ten_segments()
    res = sb.on_ack(seg(1), [block(4, 4)], 1.0, MSS)
    assert res.reordering == 0
    res = sb.on_ack(seg(3), [block(4, 4)], 1.1, MSS)  # 1 and 2 arrive late: reordering
    assert res.reordering_seen and res.reordering == seg(5) - seg(1)
    # A retransmitted segment filling a hole is recovery, not reordering.
    sb2, rate = ten_segments()
    sb2.on_ack(seg(1), [block(2, 4)], 1.0, MSS)
    sb2.on_sent(*block(1, 1), 1.1, retransmit=True, rate=rate)
    assert sb2.on_ack(seg(5), [], 1.2, MSS).reordering == 0


def test_rate_sampler_sees_each_delivery_once() -> None:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, 4, now=0.0, gap=0.001)
    sb.on_ack(seg(1), [block(2, 3)], 0.1, MSS, rate=rate)
    rate.sample(0.1)
    assert rate.delivered == 2 * MSS
    sb.on_ack(seg(5), [], 0.2, MSS, rate=rate)
    rate.sample(0.2)
    assert rate.delivered == 4 * MSS


# -- cost: proportional to what changed ------------------------------------------------------

N_BIG = 10_000


def _per_ack_engine_work(sb: Scoreboard, ack: int, blocks: list[tuple[int, int]], now: float,
                         rate: RateSampler) -> None:
    sb.on_ack(ack, blocks, now, MSS, rate=rate)
    rate.sample(now)
    sb.update_lost(MSS)
    sb.pipe(MSS)
    sb.next_seg(seg(N_BIG + 1), MSS, False)


def test_large_window_acked_one_mss_at_a_time_is_linear() -> None:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, N_BIG)
    t0 = time.perf_counter()
    for k in range(2, N_BIG + 2):
        _per_ack_engine_work(sb, seg(k), [], 1.0 + k * 1e-4, rate)
    elapsed = time.perf_counter() - t0
    assert len(sb) == 0
    # ~10k ACKs: linear work takes well under a second here; O(window) per ACK is 5e7 steps.
    assert elapsed < 3.0, elapsed


def test_growing_sack_block_over_large_window_is_linear() -> None:
    sb, rate = Scoreboard(), RateSampler()
    send(sb, rate, N_BIG)
    t0 = time.perf_counter()
    for k in range(2, N_BIG + 1):
        # Segment 1 lost; each ACK's SACK block grows by one segment (RFC 2018 duplicate ACKs).
        _per_ack_engine_work(sb, seg(1), [block(2, k)], 1.0 + k * 1e-4, rate)
    elapsed = time.perf_counter() - t0
    assert sb.sacked_segments == N_BIG - 1 and sb.lost_segments == 1
    assert elapsed < 3.0, elapsed


# -- model check: incremental state equals a from-scratch recomputation -----------------------


def brute_is_lost(recs: list[SentSegment], seq: int, dupthresh: int, mss: int) -> bool:
    above = [r for r in recs if r.sacked and r.start > seq]
    segs = sum(-(-(r.end - r.start) // mss) for r in above)
    nbytes = sum(r.end - r.start for r in above)
    return segs >= dupthresh or nbytes > (dupthresh - 1) * mss


def check_model(sb: Scoreboard, mss: int) -> None:
    recs = list(sb)
    for a, b in zip(recs, recs[1:], strict=False):
        assert a.end == b.start and a.start < a.end
    if recs:
        assert recs[-1].end == sb.snd_nxt
    for r in recs:
        assert not (r.sacked and (r.lost or r.retrans_in_flight))
    unsacked = [r for r in recs if not r.sacked]
    assert sb.sacked_segments == sum(1 for r in recs if r.sacked)
    assert sb.sacked_bytes == sum(r.end - r.start for r in recs if r.sacked)
    assert sb.lost_segments == sum(1 for r in unsacked if r.lost)
    assert sb.lost_bytes == sum(r.end - r.start for r in unsacked if r.lost)
    assert sb.retrans_out == sum(1 for r in unsacked if r.retrans_in_flight)
    assert sb.bytes_outstanding == sum(r.end - r.start for r in recs)
    # RFC 6675 SetPipe, octet by octet (per record: every octet of a record shares its state).
    pipe = 0
    for r in unsacked:
        lost = r.lost or brute_is_lost(recs, r.start, sb.dupthresh, mss)
        pipe += (r.end - r.start) * ((0 if lost else 1) + (1 if r.retrans_in_flight else 0))
    assert sb.pipe(mss) == pipe
    for r in unsacked:
        assert sb.is_lost(r.start, mss) == brute_is_lost(recs, r.start, sb.dupthresh, mss)
    sacked = [r.end for r in recs if r.sacked]
    if sacked:
        assert sb.highest_sacked == max(sacked)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_incremental_state_matches_recomputation(seed: int) -> None:
    rng = random.Random(seed)
    sb, rate = Scoreboard(dupthresh=rng.choice([1, 3, 4])), RateSampler()
    mss = rng.choice([500, 1000])
    nxt, una, now = ISS, ISS, 0.0
    for _ in range(80):
        now += 0.01
        op = rng.random()
        if op < 0.3:
            n = rng.randint(1, 2 * mss)
            sb.on_sent(nxt, nxt + n, now, retransmit=False, rate=rate)
            nxt += n
        elif op < 0.45 and nxt > una:
            una = rng.randint(una, min(nxt, una + 3 * mss))
            sb.on_ack(una, [], now, mss)
        elif op < 0.75 and nxt > una:
            blocks = []
            for _ in range(rng.randint(1, 4)):
                lo = rng.randint(una, nxt)
                hi = rng.randint(lo, min(nxt, lo + 3 * mss) + 1)
                blocks.append((lo, hi))
            new_una = rng.randint(una, min(nxt, una + mss)) if rng.random() < 0.3 else una
            sb.on_ack(new_una, blocks, now, mss)
            una = new_una
        elif op < 0.85:
            sb.update_lost(mss)
        elif op < 0.97:
            r = sb.next_seg(nxt, mss, rng.random() < 0.3)
            if r is not None and r[0] < nxt:
                sb.on_sent(*r, now, retransmit=True, rate=rate)
        else:
            sb.mark_all_lost(clear_sacked=rng.random() < 0.5)
        check_model(sb, mss)


@pytest.mark.parametrize("case", ["fresh", "retransmitted", "tso", "syn"])
def test_single_record_ack_shortcut_matches_the_general_path(case: str) -> None:
    # on_ack takes a shortcut when the one record outstanding is acknowledged without SACK
    # (every SYN, FIN and lone segment). An ACK carrying an empty (so ignored) SACK block goes
    # the general way; both must give the same result and leave the same state behind.
    def run(blocks: list[tuple[int, int]]) -> tuple[object, ...]:
        sb, rate = Scoreboard(), RateSampler()
        if case == "tso":
            sb.on_sent(1000, 5000, 0.0, retransmit=False, rate=rate, gso_size=1000)
        else:
            sb.on_sent(1000, 1001 if case == "syn" else 2000, 0.0, retransmit=False, rate=rate,
                       syn=case == "syn")
        if case == "retransmitted":
            sb.on_sent(1000, 2000, 0.2, retransmit=True, rate=rate)
        end = sb.snd_nxt
        assert end is not None
        res = sb.on_ack(end, blocks, 0.3, MSS, rate=rate)
        rate_state = tuple(getattr(rate, name) for name in RateSampler.__slots__)
        return (
            res.acked_bytes, res.sacked_bytes, res.delivered_bytes,
            [(r.start, r.end, r.pcount) for r in res.newly_acked], res.newly_sacked,
            res.rtt_sample, res.dsack, res.dsack_range, res.highest_sacked, res.reordering,
            len(sb), sb.bytes_outstanding, sb.packets_out, sb.bytes_in_flight, sb.snd_una,
            sb._sack_cache, rate_state,
        )

    shortcut = run([])
    assert shortcut == run([(5, 5)])
    assert shortcut[0] > 0 and shortcut[10] == 0
    assert (shortcut[5] is None) == (case == "retransmitted")  # Karn's rule
