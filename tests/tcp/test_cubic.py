"""CUBIC (RFC 9438) and HyStart++ (RFC 9406), driven by a fluid model at fixed RTTs."""

from __future__ import annotations

import math
import random

import pytest

from tcpstack.tcp.congestion import TCP_INFINITE_SSTHRESH, CongestionControl
from tcpstack.tcp.cubic import (
    ALPHA_CUBIC,
    BETA_CUBIC,
    C_CUBIC,
    Cubic,
    HyStartPhase,
    HyStartPlusPlus,
    cubic_k,
    w_cubic,
)
from tcpstack.tcp.newreno import NewReno

# 100 Mbit/s x 100 ms = 1 250 000 bytes: exactly 1000 segments of 1250 bytes.
MSS = 1250
BDP_SEGMENTS = 1000
IW = 10 * MSS


def after_loss(cc: CongestionControl, w_max_segments: int, now: float) -> None:
    """Put ``cc`` in congestion avoidance right after a loss at ``w_max_segments``: the
    congestion event, the engine's PRR bringing cwnd down to ssthresh, and recovery exit."""
    cc.cwnd = w_max_segments * MSS
    cc.ssthresh = cc.cwnd
    cc.on_congestion_event(cc.cwnd, now)
    cc.cwnd = cc.ssthresh
    cc.on_recovery_exit(now)


def fluid_rounds(
    cc: CongestionControl,
    start: float,
    rtt: float,
    rounds: int,
    *,
    per_ack: int = 2,
    rtt_of_round: list[float] | None = None,
    stop_when: str | None = None,
) -> list[tuple[float, float]]:
    """Fluid model: each round ACKs the window of its start in ACKs of ``per_ack`` segments
    spread evenly over one RTT. Returns (round start time, cwnd in segments) per round and a
    last entry for the end; ``stop_when="ca"`` ends it at the ACK that leaves slow start."""
    now = start
    trace = []
    for r in range(rounds):
        trace.append((now, cc.cwnd / MSS))
        round_rtt = rtt_of_round[r] if rtt_of_round is not None else rtt
        window = cc.cwnd
        acks = -(-window // (per_ack * MSS))
        acked = 0
        for i in range(acks):
            chunk = min(per_ack * MSS, window - acked)
            acked += chunk
            ack_time = now + (i + 1) / acks * round_rtt
            cc.on_ack(chunk, window - acked, ack_time, rtt=round_rtt, cwnd_limited=True)
            if stop_when == "ca" and not cc.in_slow_start:
                trace.append((ack_time, cc.cwnd / MSS))
                return trace
        now += round_rtt
    trace.append((now, cc.cwnd / MSS))
    return trace


# -- the formulas ------------------------------------------------------------------------------


@pytest.mark.parametrize("w_max", [10.0, 84.5, 1000.0])
def test_w_cubic_matches_rfc_9438_equation_1(w_max: float) -> None:
    k = math.cbrt(w_max * (1 - BETA_CUBIC) / C_CUBIC)
    assert cubic_k(w_max, BETA_CUBIC * w_max) == pytest.approx(k, rel=1e-12)
    for t in (0.0, 0.25 * k, 0.5 * k, k, 1.7 * k, 3.0 * k + 2.0):
        expected = C_CUBIC * (t - k) ** 3 + w_max
        assert w_cubic(t, w_max, k) == pytest.approx(expected, rel=1e-12)
    # At t = 0 the curve starts from the reduced window, at t = K it is back at W_max.
    assert w_cubic(0.0, w_max, k) == pytest.approx(BETA_CUBIC * w_max, rel=1e-9)
    assert w_cubic(k, w_max, k) == w_max


def test_k_is_zero_when_the_epoch_starts_at_or_above_w_max() -> None:
    assert cubic_k(50.0, 50.0) == 0.0
    assert cubic_k(50.0, 80.0) == 0.0


def test_alpha_cubic_is_reno_friendly_slope() -> None:
    assert ALPHA_CUBIC == pytest.approx(3 * 0.3 / 1.7)


# -- reductions ---------------------------------------------------------------------------------


def test_loss_multiplies_by_beta_and_records_w_max() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    cc.cwnd = 100 * MSS
    cc.on_congestion_event(100 * MSS, 1.0)
    assert cc.ssthresh == 70 * MSS
    assert cc.cwnd == 100 * MSS  # PRR's job, not the algorithm's
    assert cc.w_max == 100.0
    cc.on_recovery_exit(1.2)
    assert cc.cwnd == 70 * MSS
    cc.on_ack(MSS, 69 * MSS, 1.3, rtt=0.1, cwnd_limited=True)  # opens the epoch
    state = cc.state_dict()
    assert state["k"] == pytest.approx(math.cbrt(100 * (1 - 0.7) / 0.4))
    assert state["cwnd_epoch"] == 70.0
    assert state["epoch_start"] == 1.3


def test_fast_convergence_lowers_w_max() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    cc.cwnd = 90 * MSS  # the next loss comes below the previous maximum
    cc.on_congestion_event(90 * MSS, 5.0)
    assert cc.w_max == pytest.approx(90 * (1 + 0.7) / 2)
    assert cc.ssthresh == 63 * MSS

    plain = Cubic(MSS, IW, hystart=False, fast_convergence=False)
    after_loss(plain, 100, 0.0)
    plain.cwnd = 90 * MSS
    plain.on_congestion_event(90 * MSS, 5.0)
    assert plain.w_max == 90.0


def test_rto_collapses_window_and_restarts_curve_at_k_zero() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    cc.cwnd = 80 * MSS
    cc.on_retransmission_timeout(80 * MSS, 3.0)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 56 * MSS)
    cc.on_retransmission_timeout(MSS, 4.0)  # backed-off timeout, no progress: ssthresh holds
    assert cc.ssthresh == 56 * MSS
    trace = fluid_rounds(cc, 4.0, 0.1, 20, stop_when="ca")
    assert not cc.in_slow_start and cc.cwnd == 56 * MSS
    fluid_rounds(cc, trace[-1][0], 0.1, 1)  # the first congestion-avoidance round
    state = cc.state_dict()
    # RFC 9438 section 4.8: the first epoch after a timeout has K = 0, W_max = its start cwnd.
    assert state["k"] == 0.0
    assert cc.cwnd_epoch == 56.0 and cc.w_max == 56.0
    assert cc.w_est > cc.cwnd_epoch


def test_undo_restores_curve_state() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    fluid_rounds(cc, 0.0, 0.1, 10)
    before = cc.state_dict()
    prior = (cc.cwnd, cc.ssthresh)
    cc.on_congestion_event(cc.cwnd, 1.0)
    cc.on_recovery_exit(1.1)
    assert cc.w_max != before["w_max"]
    cc.undo(*prior)
    after = cc.state_dict()
    for key in ("cwnd", "ssthresh", "w_max", "k", "epoch_start", "cwnd_epoch", "w_est"):
        assert after[key] == before[key], key


# -- growth ------------------------------------------------------------------------------------


def test_no_growth_when_not_cwnd_limited() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    window = cc.cwnd
    for i in range(200):
        cc.on_ack(2 * MSS, window, 0.01 * i, rtt=0.1, cwnd_limited=False)
    assert cc.cwnd == window


def test_application_limited_time_is_not_part_of_t() -> None:
    """RFC 9438 section 5.8: after 10 s of application-limited sending the curve resumes where
    it paused instead of jumping 10 s ahead."""
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    fluid_rounds(cc, 0.0, 0.1, 10)
    epoch = cc.epoch_start
    assert epoch is not None
    cc.on_ack(MSS, cc.cwnd, 1.0, rtt=0.1, cwnd_limited=False)
    cc.on_ack(MSS, cc.cwnd, 11.0, rtt=0.1, cwnd_limited=True)
    assert cc.epoch_start == pytest.approx(epoch + 10.0)


def test_idle_time_is_not_part_of_t() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    cc.on_packet_sent(MSS, MSS, 0.0)
    fluid_rounds(cc, 0.0, 0.1, 10)
    epoch = cc.epoch_start
    assert epoch is not None
    cc.on_packet_sent(MSS, 2 * MSS, 1.0)  # something still in flight: not a restart
    assert cc.epoch_start == epoch
    cc.on_packet_sent(MSS, MSS, 6.0)  # the first send after 5 s with nothing in flight
    assert cc.epoch_start == pytest.approx(epoch + 5.0)


def test_target_is_capped_at_one_and_a_half_cwnd() -> None:
    """RFC 9438 section 4.2: however far the curve has run ahead (here 20 s past an epoch start,
    W_cubic is ~1700 segments), an ACKed segment adds at most half a segment, i.e. cwnd grows at
    most 1.5x per RTT."""
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    cc.on_ack(MSS, 69 * MSS, 0.0, rtt=0.1, cwnd_limited=True)  # opens the epoch at t = 0
    before = cc.cwnd
    assert w_cubic(20.1, 100, cc.k) > 1500
    cc.on_ack(2 * MSS, 68 * MSS, 20.0, rtt=0.1, cwnd_limited=True)
    target = 1.5 * before / MSS
    expected = before + (target - before / MSS) / (before / MSS) * 2 * MSS
    assert cc.cwnd == pytest.approx(expected, abs=1)
    assert cc.cwnd - before == pytest.approx(MSS, abs=1)


def test_plateau_around_w_max_at_k() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    k = cubic_k(100, 70)
    trace = fluid_rounds(cc, 0.0, 0.1, int(k / 0.1) + 12)
    near_k = [w for t, w in trace if abs(t - k) <= 0.5]
    assert near_k and all(abs(w - 100) <= 1.0 for w in near_k)
    # Growth over the second around K is tiny compared with the first second of the epoch.
    assert near_k[-1] - near_k[0] < 0.1 * (trace[10][1] - trace[0][1])


def test_reno_friendly_region_dominates_on_short_rtts() -> None:
    """With a 1 ms RTT and a 40-segment W_max, K is 3.1 s = 3100 RTTs; Reno's slope wins."""
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 40, 0.0)
    trace = fluid_rounds(cc, 0.0, 0.001, 20, per_ack=1)
    assert cc.state_dict()["region"] == "reno"
    t, w = trace[-1]
    assert w_cubic(t, 40, cubic_k(40, 28)) < 28.5  # the cubic curve has barely moved
    assert w == pytest.approx(28 + 20 * ALPHA_CUBIC, abs=1.0)
    # Once W_est has reached the pre-loss window, alpha_cubic becomes 1: one segment per RTT.
    trace = fluid_rounds(cc, t, 0.001, 40, per_ack=1)
    tail = [w for _, w in trace[-11:]]
    assert tail[0] > 40
    assert tail[-1] - tail[0] == pytest.approx(10, abs=1.0)


def test_fluid_model_reaches_bdp_with_the_cubic_shape() -> None:
    """A loss at 700 segments on a 100 Mbit/s x 100 ms path (1000-segment BDP, no further loss):
    cwnd follows W_cubic(t), concave up to the plateau at K and convex beyond it, and gets back
    to the full BDP in ~17 s where NewReno would need ~51 s."""
    cubic = Cubic(MSS, IW, hystart=False)
    after_loss(cubic, 700, 0.0)
    trace = fluid_rounds(cubic, 0.0, 0.1, 200)
    k = cubic_k(700, 490)
    for t, w in trace:
        assert w == pytest.approx(w_cubic(t, 700, k), abs=2.0), t
    reached = next(t for t, w in trace if w >= BDP_SEGMENTS)
    predicted = k + math.cbrt((BDP_SEGMENTS - 700) / C_CUBIC)
    assert predicted - 0.2 <= reached <= predicted + 0.2
    assert cubic.state_dict()["region"] == "convex"

    def growth(t0: float, t1: float) -> float:
        inside = [w for t, w in trace if t0 <= t <= t1]
        return inside[-1] - inside[0]

    # Concave: growth slows approaching W_max; convex: it accelerates past it.
    assert growth(0, k / 3) > 2 * growth(k / 3, 2 * k / 3) > 4 * growth(2 * k / 3, k)
    assert growth(k, k + 3) < growth(k + 3, k + 6) < growth(k + 6, k + 9)

    reno = NewReno(MSS, IW)
    after_loss(reno, 700, 0.0)
    reno_trace = fluid_rounds(reno, 0.0, 0.1, 200)
    assert reno.ssthresh == 350 * MSS  # NewReno halves where CUBIC keeps 70 %
    assert reno_trace[-1][1] == pytest.approx(350 + 200, abs=1)
    assert reno_trace[-1][1] < 0.75 * BDP_SEGMENTS


# -- HyStart++ ---------------------------------------------------------------------------------


def queueing_rtts(base: float, bdp: int, rounds: int, cwnd_doubling_from: int) -> list[float]:
    """RTT of round r when slow start doubles cwnd from ``cwnd_doubling_from`` segments and a
    path of ``bdp`` segments queues the excess (rate = bdp / base segments per second)."""
    rate = bdp / base
    return [base + max(0, cwnd_doubling_from * 2**r - bdp) / rate for r in range(rounds)]


def test_hystart_exits_slow_start_on_rtt_increase_before_any_loss() -> None:
    cc = Cubic(MSS, IW)
    rng = random.Random(7)
    base = 0.05
    rtts = [base + rng.uniform(0, 0.001) for _ in range(4)] + [base + 0.03] * 12
    trace = fluid_rounds(cc, 0.0, base, len(rtts), per_ack=1, rtt_of_round=rtts, stop_when="ca")
    assert cc.hystart is not None and cc.hystart.phase is HyStartPhase.DONE
    assert not cc.in_slow_start
    assert cc.ssthresh == cc.cwnd  # RFC 9406: enter congestion avoidance at the current cwnd
    # Rounds 0-3 doubled (10 -> 160), round 4 saw the rise after 8 samples and entered CSS; the
    # fifth round boundary after that (the first ACK of round 9) ends slow start, far below the
    # 10 * 2**9 segments plain slow start would have reached.
    assert (cc.hystart.rounds, cc.hystart.css_rounds) == (9, 5)
    assert len(trace) == 11 and trace[4][1] == 160
    # In CSS cwnd grows by a quarter of slow start's rate: x1.25 per round.
    for (_, w0), (_, w1) in zip(trace[5:9], trace[6:10], strict=True):
        assert w1 == pytest.approx(1.25 * w0, rel=0.01)
    assert trace[-1][1] == trace[9][1] == cc.cwnd / MSS
    assert cc.state_dict()["w_max"] == 0.0  # no loss happened: the first epoch uses K = 0


def test_hystart_keeps_slow_start_with_flat_rtt() -> None:
    cc = Cubic(MSS, IW)
    rng = random.Random(11)
    rtts = [0.05 + rng.uniform(0, 0.002) for _ in range(9)]  # jitter below the 4 ms threshold
    fluid_rounds(cc, 0.0, 0.05, len(rtts), per_ack=1, rtt_of_round=rtts)
    assert cc.ssthresh == TCP_INFINITE_SSTHRESH and cc.in_slow_start
    assert cc.cwnd == IW * 2**9
    assert cc.hystart is not None and cc.hystart.phase is HyStartPhase.SLOW_START


def test_hystart_detects_the_first_round_that_queues() -> None:
    """A 100-segment path with a 50 ms base RTT: the threshold is min(RTT/8, 16 ms) = 6.25 ms,
    12.5 segments of queue. The 80-segment round does not queue, the 160-segment one does."""
    cc = Cubic(MSS, IW)
    rtts = queueing_rtts(0.05, 100, 12, 10)
    trace = fluid_rounds(cc, 0.0, 0.05, 12, per_ack=1, rtt_of_round=rtts, stop_when="ca")
    assert [w for _, w in trace[:5]] == [10, 20, 40, 80, 160]
    # Round 4 grew a segment per ACK for 7 ACKs; its 8th RTT sample moved it to CSS, where the
    # remaining 153 ACKs grew a quarter segment each.
    assert trace[5][1] == pytest.approx(160 + 7 + 153 / 4, abs=0.01)
    assert cc.ssthresh == cc.cwnd


def test_hystart_returns_to_slow_start_after_a_spurious_rise() -> None:
    cc = Cubic(MSS, IW)
    rtts = [0.05, 0.05, 0.05, 0.08, 0.05, 0.05]
    trace = fluid_rounds(cc, 0.0, 0.05, len(rtts), per_ack=1, rtt_of_round=rtts)
    assert cc.hystart is not None
    assert cc.hystart.phase is HyStartPhase.SLOW_START
    assert cc.ssthresh == TCP_INFINITE_SSTHRESH
    # Round 4's RTT fell below the CSS baseline after N_RTT_SAMPLE samples: doubling resumed.
    assert trace[-1][1] == pytest.approx(2 * trace[-2][1], rel=0.02)


def test_hystart_needs_enough_samples() -> None:
    hs = HyStartPlusPlus()
    hs.on_ack(MSS, 4 * MSS, 0.05)
    for _ in range(4):
        hs.on_ack(MSS, 0, 0.05)
    # Next round: 7 samples with a big rise are not enough to judge.
    for _ in range(HyStartPlusPlus.N_RTT_SAMPLE - 1):
        hs.on_ack(MSS, 100 * MSS, 0.2)
    assert hs.phase is HyStartPhase.SLOW_START
    hs.on_ack(MSS, 100 * MSS, 0.2)
    assert hs.phase is HyStartPhase.CSS


def test_loss_in_slow_start_stops_hystart() -> None:
    cc = Cubic(MSS, IW)
    fluid_rounds(cc, 0.0, 0.05, 3, per_ack=1)
    cc.on_congestion_event(cc.cwnd, 0.2)
    assert cc.hystart is not None and cc.hystart.phase is HyStartPhase.DONE
    assert cc.ssthresh == int(80 * MSS * 0.7)


def test_hystart_can_be_disabled() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    rtts = [0.05] * 4 + [0.08] * 6
    fluid_rounds(cc, 0.0, 0.05, len(rtts), per_ack=1, rtt_of_round=rtts)
    assert cc.in_slow_start and cc.cwnd == IW * 2**10
    assert cc.state_dict()["hystart"] == "off"


def test_set_mss_keeps_curve_in_segments() -> None:
    cc = Cubic(MSS, IW, hystart=False)
    after_loss(cc, 100, 0.0)
    fluid_rounds(cc, 0.0, 0.1, 5)
    w_max, k = cc.w_max, cc.k
    segments = cc.cwnd / MSS
    cc.set_mss(1000)
    assert cc.cwnd / 1000 == pytest.approx(segments, abs=0.01)
    assert (cc.w_max, cc.k) == (w_max, k)


def test_bad_rtt_rejected() -> None:
    cc = Cubic(MSS, IW)
    with pytest.raises(ValueError, match="rtt"):
        cc.on_ack(MSS, 0, 0.0, rtt=-0.1, cwnd_limited=True)
    with pytest.raises(ValueError, match="beta"):
        Cubic(MSS, IW, beta=1.0)
