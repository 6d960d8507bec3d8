"""Congestion control against models, in virtual time over a rate-limited drop-tail bottleneck
(tests/tcp/helpers.py ``Bottleneck``): NewReno vs Mathis, CUBIC utilisation, two-flow fairness."""

from __future__ import annotations

import math

import pytest
from tcp_helpers import jain, run_bulk_flows

MSS = 1448  # 1500 MTU, timestamps on


def test_newreno_goodput_matches_mathis_under_random_loss() -> None:
    # 10 Mbit/s, 50 ms RTT, 1% random loss: Mathis et al. MSS/RTT * sqrt(3/2)/sqrt(p)
    # (ABC keeps the growth at one MSS per RTT despite delayed ACKs, so C = 1.22).
    duration, warmup = 60.0, 5.0
    got = run_bulk_flows(flows=1, rate=10e6 / 8, rtt=0.05, queue_bytes=62_500,
                         duration=duration, loss=0.01, congestion="newreno", seed=5,
                         measure_from=warmup)
    goodput = got[0] / (duration - warmup)
    mathis = MSS / 0.05 * 1.22 / math.sqrt(0.01)
    assert 0.65 * mathis <= goodput <= 1.35 * mathis, (goodput, mathis)


@pytest.mark.slow
def test_cubic_fills_a_long_fat_pipe() -> None:
    # 100 Mbit/s, 100 ms RTT, one-BDP buffer, no loss: >= 80% utilisation after 10 s.
    rate = 100e6 / 8
    got = run_bulk_flows(flows=1, rate=rate, rtt=0.1, queue_bytes=1_250_000, duration=12.0,
                         congestion="cubic", measure_from=10.0)
    assert got[0] / 2.0 / rate >= 0.8


def test_two_cubic_flows_share_a_bottleneck_fairly() -> None:
    got = run_bulk_flows(flows=2, rate=10e6 / 8, rtt=0.05, queue_bytes=62_500, duration=30.0,
                         congestion="cubic", measure_from=10.0)
    assert min(got) > 0
    assert jain(got) >= 0.9
