"""The impairment decision function, driven synchronously with many packets.

Statistical checks compare an observed count with its expectation within 4 standard deviations;
every generator is seeded, so each assertion is deterministic and would fail if the mechanism it
names were missing or mis-parameterised.
"""

from __future__ import annotations

import math
import random

import pytest
from links_helpers import numbered

from tcpstack.links import ImpairmentConfig, ImpairmentModel

N = 20_000
PACKET = numbered("198.18.0.1", "198.18.0.2", 0, size=1000)


Results = list[list[tuple[float, bytes]]]


def run(
    config: ImpairmentConfig, n: int = N, seed: int = 1, spacing: float = 0.0
) -> tuple[ImpairmentModel, Results]:
    model = ImpairmentModel(config, random.Random(seed))
    results = [model.process(PACKET, i * spacing) for i in range(n)]
    return model, results


def within_sigmas(observed: float, expected: float, variance: float, k: float = 4.0) -> bool:
    return abs(observed - expected) <= k * math.sqrt(variance)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="loss"):
        ImpairmentConfig(loss=1.5)
    with pytest.raises(ValueError, match="delay"):
        ImpairmentConfig(delay=-0.1)
    with pytest.raises(ValueError, match="jitter"):
        ImpairmentConfig(jitter=math.nan)
    with pytest.raises(ValueError, match="rate"):
        ImpairmentConfig(rate=0)
    with pytest.raises(ValueError, match="queue_bytes"):
        ImpairmentConfig(rate=1e6, queue_bytes=0)
    with pytest.raises(ValueError, match="absorbing"):
        ImpairmentConfig(p_good_to_bad=0.1)
    with pytest.raises(ValueError, match="reorder"):
        ImpairmentConfig(reorder=0.1)
    with pytest.raises(TypeError, match="down"):
        ImpairmentConfig(down=1)  # type: ignore[arg-type]


def test_identity_config_passes_everything_at_once() -> None:
    model, results = run(ImpairmentConfig(), n=100, spacing=0.5)
    assert results == [[(i * 0.5, PACKET)] for i in range(100)]
    assert model.stats.passed == model.stats.offered == 100
    assert not ImpairmentConfig().timed


def test_bernoulli_loss_rate_within_binomial_bound() -> None:
    p = 0.05
    model, results = run(ImpairmentConfig(loss=p))
    lost = sum(1 for r in results if not r)
    assert model.stats.dropped_loss == lost
    assert within_sigmas(lost, N * p, N * p * (1 - p))
    assert model.stats.passed == N - lost


def test_same_seed_same_pattern_other_seed_differs() -> None:
    config = ImpairmentConfig(loss=0.1)
    pattern = [bool(r) for r in run(config, n=2000, seed=7)[1]]
    assert pattern == [bool(r) for r in run(config, n=2000, seed=7)[1]]
    assert pattern != [bool(r) for r in run(config, n=2000, seed=8)[1]]


def test_gilbert_elliott_stationary_loss_rate() -> None:
    config = ImpairmentConfig(
        p_good_to_bad=0.02, p_bad_to_good=0.25, loss_in_good=0.01, loss_in_bad=0.5
    )
    pi_bad = 0.02 / 0.27
    expected = (1 - pi_bad) * 0.01 + pi_bad * 0.5
    assert config.stationary_loss == pytest.approx(expected)
    model, results = run(config)
    lost = sum(1 for r in results if not r)
    assert model.stats.dropped_burst == lost
    # Losses are correlated through the hidden state: the variance of their sum is the binomial
    # one plus the lag covariances (lb-lg)^2 pi_b pi_g lambda^k, lambda = 1 - p_gb - p_bg.
    lam = 1 - 0.02 - 0.25
    variance = N * (
        expected * (1 - expected) + 2 * (0.5 - 0.01) ** 2 * pi_bad * (1 - pi_bad) * lam / (1 - lam)
    )
    assert within_sigmas(lost, N * expected, variance)


def loss_runs(results: Results) -> list[int]:
    runs, current = [], 0
    for r in results:
        if not r:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def test_gilbert_elliott_losses_come_in_bursts_of_mean_one_over_p_bad_to_good() -> None:
    p_gb, p_bg = 0.01, 0.2
    model, results = run(ImpairmentConfig(p_good_to_bad=p_gb, p_bad_to_good=p_bg))
    runs = loss_runs(results)
    mean = sum(runs) / len(runs)
    # Bad-state sojourns are geometric: mean 1/p, variance (1-p)/p^2.
    assert within_sigmas(mean, 1 / p_bg, (1 - p_bg) / p_bg**2 / len(runs))
    # Independent loss at the same rate has runs of mean 1/(1-p), barely above 1.
    rate = sum(runs) / N
    _, bernoulli = run(ImpairmentConfig(loss=rate), seed=2)
    b_runs = loss_runs(bernoulli)
    assert sum(b_runs) / len(b_runs) < 1.2 < 3.0 < mean


def test_duplication_count_and_copies() -> None:
    p = 0.03
    model, results = run(ImpairmentConfig(duplicate=p))
    doubled = [r for r in results if len(r) == 2]
    assert model.stats.duplicated == len(doubled)
    assert within_sigmas(len(doubled), N * p, N * p * (1 - p))
    assert all(a == b == (0.0, PACKET) for a, b in doubled)
    assert sum(len(r) for r in results) == N + len(doubled) == model.stats.passed


def test_corruption_flips_exactly_one_bit() -> None:
    p = 0.02
    model, results = run(ImpairmentConfig(corrupt=p))
    changed = 0
    for [(_, out)] in results:
        assert len(out) == len(PACKET)
        diff = int.from_bytes(out, "big") ^ int.from_bytes(PACKET, "big")
        if diff:
            changed += 1
            assert diff.bit_count() == 1
    assert changed == model.stats.corrupted
    assert within_sigmas(changed, N * p, N * p * (1 - p))
    # The flipped bit is spread over the whole packet, not a fixed position.
    model, results = run(ImpairmentConfig(corrupt=1.0), n=500)
    positions = {
        (int.from_bytes(r[0][1], "big") ^ int.from_bytes(PACKET, "big")).bit_length()
        for r in results
    }
    assert len(positions) > 300


def test_down_drops_everything_and_up_restores() -> None:
    model = ImpairmentModel(ImpairmentConfig(down=True), random.Random(1))
    assert all(model.process(PACKET, float(i)) == [] for i in range(50))
    model.set_down(False)
    assert all(model.process(PACKET, float(i)) == [(float(i), PACKET)] for i in range(50))
    model.set_down(True)
    assert model.process(PACKET, 99.0) == []
    assert model.stats.dropped_down == 51
    assert model.stats.passed == 50


def test_delay_is_added_exactly() -> None:
    model, results = run(ImpairmentConfig(delay=0.125), n=100, spacing=0.01)
    assert [r[0][0] for r in results] == [i * 0.01 + 0.125 for i in range(100)]


def test_jitter_without_reorder_keeps_order_but_varies_transit() -> None:
    delay, jitter, spacing = 0.05, 0.02, 0.001
    model, results = run(ImpairmentConfig(delay=delay, jitter=jitter), n=5000, spacing=spacing)
    departures = [r[0][0] for r in results]
    assert departures == sorted(departures)
    transits = [t - i * spacing for i, t in enumerate(departures)]
    assert min(transits) >= delay - jitter - 1e-12
    assert max(transits) <= delay + jitter + 1e-12
    assert max(transits) - min(transits) > jitter  # jitter is applied, not ignored


def test_reorder_probability_and_held_back_packets_are_overtaken() -> None:
    p, spacing = 0.1, 0.001
    config = ImpairmentConfig(delay=0.01, reorder=p, reorder_delay=0.005)
    model, results = run(config, spacing=spacing)
    departures = [r[0][0] for r in results]
    reordered = model.stats.reordered
    assert within_sigmas(reordered, N * p, N * p * (1 - p))
    # A held-back packet leaves after its successor; in-order ones leave after their predecessor.
    overtaken = sum(1 for a, b in zip(departures, departures[1:], strict=False) if a > b)
    late = sum(1 for i, t in enumerate(departures) if t > i * spacing + 0.01 + 1e-12)
    assert late == reordered
    assert 0.8 * reordered < overtaken <= reordered


def test_reorder_without_reorder_delay_sends_ahead() -> None:
    config = ImpairmentConfig(delay=0.01, reorder=0.2)
    model, results = run(config, n=2000, spacing=0.001)
    early = sum(1 for i, r in enumerate(results) if r[0][0] == i * 0.001)
    assert early == model.stats.reordered > 300


def test_rate_limit_serialises_and_queue_overflow_drops() -> None:
    size, rate, queue_bytes = len(PACKET), 1e6, 10_000
    model = ImpairmentModel(ImpairmentConfig(rate=rate, queue_bytes=queue_bytes), random.Random(1))
    burst = [model.process(PACKET, 0.0) for _ in range(30)]
    accepted = [r[0][0] for r in burst if r]
    assert len(accepted) == queue_bytes // size
    assert model.stats.dropped_queue == 30 - len(accepted)
    tx_time = size * 8 / rate
    assert accepted == pytest.approx([(k + 1) * tx_time for k in range(len(accepted))])
    # Once the queue has drained, arrivals are accepted again and start serialising at once.
    later = accepted[-1] + 1.0
    assert model.process(PACKET, later) == [(pytest.approx(later + tx_time), PACKET)]
