"""overlay.metrics: every formula of the module docstring against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from overlay.config import MetricSettings
from overlay.linkstate import validate_lsa
from overlay.messages import LinkAdvert, Lsa
from overlay.metrics import LinkEstimator, average_window, pftk_throughput, tcp_throughput
from tcpstack.tcp.info import TCPInfo

U32_MAX = 0xFFFF_FFFF


def snap(**fields: Any) -> TCPInfo:
    """An ESTABLISHED snapshot, no RTT sample yet (min_rtt ~0U as Linux reports it).

    In these hand-computed examples ``data_segs_out`` is given as *first* transmissions; the
    snapshot carries the wire total (first transmissions plus ``total_retrans``), as Linux and
    tcpstack report ``tcpi_data_segs_out``.
    """
    base: dict[str, Any] = {"state": 1, "min_rtt": U32_MAX, "snd_mss": 1460}
    base.update(fields)
    base["data_segs_out"] = base.get("data_segs_out", 0) + base.get("total_retrans", 0)
    return TCPInfo.zeros(**base)


def estimator(**settings: Any) -> LinkEstimator:
    return LinkEstimator("b", MetricSettings(**settings))


# -- PFTK --------------------------------------------------------------------------------------


def test_pftk_worked_example() -> None:
    # mss 1460 B, RTT 100 ms, T0 400 ms, p = 1%, b = 2:
    #   RTT * sqrt(2bp/3)             = 0.1 * sqrt(0.04/3)       = 0.1 * 0.1154700538 = 0.0115470054
    #   min(1, 3 sqrt(3bp/8))         = 3 * sqrt(0.0075)         = 0.2598076211
    #   p (1 + 32 p^2)                = 0.01 * 1.0032            = 0.010032
    #   T0 term                       = 0.4 * 0.2598076211 * 0.010032 = 0.0010425560
    #   B = 1 / (0.0115470054 + 0.0010425560) = 1 / 0.0125895614 = 79.43099 packets/s
    #   * 1460 B                      = 115 969.2 B/s
    assert pftk_throughput(1460, 0.1, 0.4, 0.01) == pytest.approx(115_969.2, rel=1e-6)


def test_pftk_timeout_term_saturates_at_high_loss() -> None:
    # mss 1000, RTT 50 ms, T0 200 ms, p = 20%: 3 sqrt(3bp/8) = 3 sqrt(0.15) = 1.16 -> min = 1
    #   0.05 * sqrt(0.8/3) = 0.05 * 0.5163977795      = 0.0258198890
    #   0.2 * 1 * 0.2 * (1 + 32 * 0.04) = 0.04 * 2.28  = 0.0912
    #   B = 1 / 0.1170198890 = 8.545556 packets/s -> 8545.556 B/s
    assert pftk_throughput(1000, 0.05, 0.2, 0.2) == pytest.approx(8545.556, rel=1e-6)


def test_pftk_window_limit() -> None:
    # p = 0.01%: the loss term allows ~865 packets/s, a 10-packet window only 10 / 0.1 = 100.
    assert pftk_throughput(1460, 0.1, 0.4, 0.0001, wmax=10) == pytest.approx(146_000.0)
    assert pftk_throughput(1460, 0.1, 0.4, 0.0, wmax=10) == pytest.approx(146_000.0)
    assert pftk_throughput(1460, 0.1, 0.4, 0.0) == math.inf


def test_pftk_without_timeouts_is_the_square_root_law() -> None:
    # T0 = 0 leaves Mathis et al.: B = MSS / (RTT sqrt(2bp/3)).
    mss, rtt, p, b = 1460, 0.08, 0.002, 1
    assert pftk_throughput(mss, rtt, 0.0, p, b) == pytest.approx(
        mss / (rtt * math.sqrt(2 * b * p / 3))
    )


@pytest.mark.parametrize(
    "args",
    [(0, 0.1, 0.2, 0.01), (1460, 0.0, 0.2, 0.01), (1460, 0.1, -1, 0.01), (1460, 0.1, 0.2, 1.5)],
)
def test_pftk_rejects_bad_arguments(args: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError):
        pftk_throughput(*args)


# -- response functions of the congestion controls ----------------------------------------------


def test_cubic_average_window_is_the_larger_of_cubic_and_reno_friendly() -> None:
    # (C (3 + beta) / (4 (1 - beta)))**(1/4) = (0.4 * 3.7 / 1.2)**0.25 = 1.2333**0.25 = 1.053829
    # RTT 200 ms, p = 1e-4: W_cubic = 1.053829 * 2000**0.75 = 1.053829 * 299.0698 = 315.1684,
    # W_est = sqrt(3 / 2e-4) = 122.4745: the CUBIC region (long RTT, little loss).
    assert average_window(1e-4, 0.2) == pytest.approx(315.1684, rel=1e-6)
    assert average_window(1e-4, 0.2, "newreno") == pytest.approx(122.4745, rel=1e-6)
    # RTT 50 ms, p = 0.001: W_cubic = 1.053829 * 50**0.75 = 19.815 < W_est = sqrt(1500) = 38.7298:
    # the Reno-friendly region, where CUBIC sends what Reno would.
    assert average_window(0.001, 0.05) == pytest.approx(math.sqrt(1500), rel=1e-9)
    assert average_window(0.001, 0.05) == average_window(0.001, 0.05, "newreno")


def test_cubic_throughput_worked_example() -> None:
    # mss 1460 B, RTT 200 ms, T0 400 ms, p = 1e-4, CUBIC, b = 1: W = 315.1684 (above),
    #   Wpeak = 2 W / 1.7 = 370.7863, min(1, 3 / Wpeak) = 0.00809091
    #   RTT / W = 0.2 / 315.1684 = 0.000634581
    #   T0 term = 0.4 * 0.00809091 * 1e-4 * (1 + 3.2e-7) = 0.000000323637
    #   B = 1 / 0.000634904 = 1575.0388 packets/s * 1460 = 2 299 556 B/s
    assert tcp_throughput(1460, 0.2, 0.4, 1e-4) == pytest.approx(2_299_556.3, rel=1e-6)
    # The paper's NewReno with delayed ACKs says less than half of that on the same path.
    assert pftk_throughput(1460, 0.2, 0.4, 1e-4) < 0.45 * tcp_throughput(1460, 0.2, 0.4, 1e-4)


@pytest.mark.parametrize(
    ("mss", "rtt", "rto", "loss", "b"),
    [(1460, 0.1, 0.4, 0.01, 2), (1000, 0.05, 0.2, 0.2, 2), (1448, 0.03, 0.23, 0.003, 1),
     (536, 0.5, 1.0, 0.9, 3)],
)
def test_newreno_is_the_pftk_formula(
    mss: float, rtt: float, rto: float, loss: float, b: int
) -> None:
    # Written out independently of tcp_throughput: the paper's closed form.
    expected = mss / (
        rtt * math.sqrt(2 * b * loss / 3)
        + rto * min(1, 3 * math.sqrt(3 * b * loss / 8)) * loss * (1 + 32 * loss**2)
    )
    assert tcp_throughput(mss, rtt, rto, loss, congestion="newreno", b=b) == pytest.approx(
        expected, rel=1e-12
    )
    assert pftk_throughput(mss, rtt, rto, loss, b) == pytest.approx(expected, rel=1e-12)


def test_acking_every_segment_raises_the_reno_window_by_sqrt_2() -> None:
    # Without the timeout term (T0 = 0) the throughput is W / RTT and W ~ 1 / sqrt(b) (at RTT
    # 20 ms and p = 1% CUBIC is in its Reno-friendly region: W_cubic = 1.77 < W_est = 8.66).
    for congestion in ("newreno", "cubic"):
        b1 = tcp_throughput(1460, 0.02, 0.0, 0.01, congestion=congestion, b=1)
        b2 = tcp_throughput(1460, 0.02, 0.0, 0.01, congestion=congestion, b=2)
        assert b1 / b2 == pytest.approx(math.sqrt(2), rel=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [{"congestion": "bbr"}, {"b": 0}, {"congestion": "vegas", "loss": 0.0}],
)
def test_tcp_throughput_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"mss": 1460, "rtt": 0.05, "rto": 0.2, "loss": 0.01, **kwargs}
    with pytest.raises(ValueError):
        tcp_throughput(**args)


def test_estimator_rejects_unknown_congestion_control() -> None:
    with pytest.raises(ValueError, match="congestion"):
        LinkEstimator("b", MetricSettings(), congestion="bbr")
    with pytest.raises(ValueError, match="segments_per_ack"):
        LinkEstimator("b", MetricSettings(), segments_per_ack=0)


# -- loss --------------------------------------------------------------------------------------


def test_loss_window_and_ewma_steps() -> None:
    est = estimator(loss_window=100, loss_alpha=0.25, loss_floor=0.001)
    # 100 new segments, none retransmitted: window [(100, 0)], raw 0, ewma 0 -> the floor.
    est.on_info(snap(data_segs_out=100), 1.0)
    assert est.raw_loss == 0.0 and est.loss() == 0.001
    # +80 new, +20 retransmitted: sent 100; (100, 0) leaves the window -> [(100, 20)],
    # raw 0.2, ewma 0 + 0.25 * 0.2 = 0.05.
    est.on_info(snap(data_segs_out=180, total_retrans=20), 1.5)
    assert est.raw_loss == pytest.approx(0.2) and est.loss() == pytest.approx(0.05)
    # +50 new: 150 in the window, the oldest is cut to its newest 50 (10 retransmitted) ->
    # [(50, 10), (50, 0)], raw 0.1, ewma 0.05 + 0.25 * (0.1 - 0.05) = 0.0625.
    est.on_info(snap(data_segs_out=230, total_retrans=20), 2.0)
    assert est.raw_loss == pytest.approx(0.1) and est.loss() == pytest.approx(0.0625)
    # Nothing sent: no loss sample, nothing changes.
    est.on_info(snap(data_segs_out=230, total_retrans=20), 2.5)
    assert est.loss() == pytest.approx(0.0625)


def test_loss_floor() -> None:
    est = estimator(loss_window=1000, loss_floor=0.01)
    assert est.loss() == 0.01  # before any sample
    # 1 retransmission in 1000 sent: raw and ewma 0.001, below the floor.
    est.on_info(snap(data_segs_out=999, total_retrans=1), 1.0)
    assert est.raw_loss == pytest.approx(0.001)
    assert est.loss() == 0.01
    assert estimator(loss_floor=0.0).loss() == 0.0


def test_dsack_reported_retransmissions_are_not_losses() -> None:
    est = estimator(loss_window=1000)
    # 90 new + 10 retransmitted, 4 of them reported spurious by DSACK: 6 losses in 100 sent.
    est.on_info(snap(data_segs_out=90, total_retrans=10, dsack_dups=4), 1.0)
    assert est.raw_loss == pytest.approx(0.06) and est.loss() == pytest.approx(0.06)


def test_retransmissions_on_a_dead_path_drive_loss_up() -> None:
    est = estimator(loss_window=100, loss_alpha=0.5)
    est.on_info(snap(data_segs_out=100), 1.0)
    # An RTO series: 4 retransmissions, nothing new. Window [(100, 0), (4, 4)] trimmed to
    # [(96, 0), (4, 4)]: raw 0.04, ewma 0.02.
    est.on_info(snap(data_segs_out=100, total_retrans=4), 2.0)
    assert est.raw_loss == pytest.approx(0.04) and est.loss() == pytest.approx(0.02)


def test_counter_reset_by_decrease() -> None:
    est = estimator(loss_window=1000, loss_alpha=1.0)
    est.on_info(snap(data_segs_out=1000, total_retrans=0, bytes_acked=10**6), 1.0)
    # Reconnected: the new connection's counters start again at 0 and are already at 50 / 5.
    # Measured from zero: (45 + 5) sent, 5 retransmitted; a naive difference would be negative.
    est.on_info(snap(data_segs_out=45, total_retrans=5, bytes_acked=1000), 2.0)
    # Window [(1000, 0), (50, 5)] trimmed to 1000: [(950, 0), (50, 5)], raw 0.005.
    assert est.raw_loss == pytest.approx(0.005)
    # And the baseline follows the new connection.
    est.on_info(snap(data_segs_out=95, total_retrans=5, bytes_acked=2000), 3.0)
    assert est.raw_loss == pytest.approx(5 / 1000)


def test_counter_reset_by_epoch_when_counters_do_not_decrease() -> None:
    est = estimator(loss_window=1000, loss_alpha=1.0)
    est.on_info(snap(data_segs_out=100), 1.0, epoch=1)
    # Connection 2 has already sent more than connection 1 did: only the epoch tells.
    est.on_info(snap(data_segs_out=150, total_retrans=30), 2.0, epoch=2)
    # From zero: 150 + 30 = 180 sent, 30 retransmitted; window 280 segments, 30 retransmitted.
    assert est.raw_loss == pytest.approx(30 / 280)
    # Same epoch, counters going on: an ordinary delta.
    est.on_info(snap(data_segs_out=250, total_retrans=30), 3.0, epoch=2)
    assert est.raw_loss == pytest.approx(30 / 380)


# -- latency -----------------------------------------------------------------------------------


def test_latency_from_tcp_rtt_in_microseconds() -> None:
    est = estimator()
    assert est.quality(0.0).latency == math.inf and est.quality(0.0).min_rtt == math.inf
    est.on_info(snap(rtt=50_000, min_rtt=40_000, bytes_acked=100), 1.0)
    q = est.quality(1.0)
    assert q.latency == pytest.approx(0.05) and q.min_rtt == pytest.approx(0.04)
    # rtt 0 means "no sample yet" and keeps the previous value.
    est.on_info(snap(rtt=0, bytes_acked=100), 2.0)
    assert est.latency() == pytest.approx(0.05)


def test_probe_rtt_smoothed_is_the_latency_of_an_idle_link() -> None:
    est = estimator(idle_after=1.0)
    est.on_probe_rtt(0.1, 1.0)
    est.on_probe_rtt(0.2, 2.0)
    assert est.latency(2.0) == pytest.approx(0.1 + (0.2 - 0.1) / 8)  # 0.1125, RFC 6298 gain
    assert est.min_rtt() == pytest.approx(0.1)
    # TCP's samples on an idle link carry the peer's delayed ACK: they are not its latency,
    # however fresh (min_rtt still takes them: it is a lower bound either way).
    est.on_info(snap(rtt=230_000, min_rtt=25_000, bytes_acked=500), 3.0)
    assert est.latency(3.0) == pytest.approx(0.1125) and est.min_rtt() == pytest.approx(0.025)
    est.on_probe_rtt(0.2, 4.5)
    assert est.latency(4.5) == pytest.approx(0.1125 + (0.2 - 0.1125) / 8)
    with pytest.raises(ValueError):
        est.on_probe_rtt(-1.0, 5.0)


def test_tcp_srtt_is_the_latency_while_application_traffic_flows() -> None:
    est = estimator(idle_after=1.0)
    est.on_probe_rtt(0.1, 1.0)
    est.on_info(snap(rtt=30_000, bytes_acked=500), 2.0)
    assert est.latency(2.0) == pytest.approx(0.1)  # idle: the probes' figure
    est.on_app(2.0)
    assert est.busy(2.5) and est.quality(2.5).latency == pytest.approx(0.03)
    # idle_after without Data or DataAck: idle again, back to the probes.
    assert not est.busy(3.0) and est.quality(3.0).latency == pytest.approx(0.1)
    # No probe RTT at all (a link that was never idle): TCP's srtt rather than nothing.
    fresh = estimator()
    fresh.on_info(snap(rtt=40_000, bytes_acked=500), 1.0)
    assert fresh.latency(1.0) == pytest.approx(0.04)


def test_an_unmeasured_link_is_advertised_down_with_finite_numbers() -> None:
    est = estimator()
    est.set_up(True, 0.0)
    assert est.quality(0.0).up and est.quality(0.0).latency == math.inf
    adv = est.advert(0.0)
    assert adv == LinkAdvert("b", 0.0, est.loss(), 0.0, False)
    assert validate_lsa(Lsa("a", 1, (adv,))) is None  # the database takes it
    est.on_probe_rtt(0.02, 0.5)
    adv = est.advert(0.5)
    assert adv.up and adv.latency == pytest.approx(0.02)
    # Unbounded throughput (no loss floor, no window, no delivery rate) is not advertisable
    # either.
    est = estimator(loss_floor=0.0)
    est.set_up(True, 0.0)
    est.on_info(snap(rtt=20_000, rto=200_000, snd_wnd=0, data_segs_in=1, bytes_acked=1), 0.0)
    assert est.quality(0.0).throughput == math.inf
    adv = est.advert(0.0)
    assert not adv.up and adv.throughput == 0.0 and adv.latency == pytest.approx(0.02)
    assert validate_lsa(Lsa("a", 1, (adv,))) is None


# -- throughput --------------------------------------------------------------------------------

# RTT 50 ms, T0 200 ms, mss 1460, loss at the 0.001 floor, CUBIC with b = 1 (the defaults):
#   W = max(W_cubic 19.815, W_est sqrt(1500) = 38.729833) = 38.729833, Wpeak = 45.564510
#   RTT / W = 0.05 / 38.729833 = 0.0012909944
#   0.2 * (3 / 45.564510) * 0.001 * (1 + 3.2e-5) = 0.2 * 0.0658408 * 0.001000032 = 0.0000131686
#   1 / 0.0013041630 = 766.7753 packets/s * 1460 = 1 119 492 B/s
CUBIC_50MS = 1_119_492.0
# The paper's NewReno with b = 2 on the same link, for comparison:
#   0.05 * sqrt(0.004/3) = 0.05 * 0.0365148372 = 0.0018257419
#   0.2 * 3 sqrt(0.00075) * 0.001 * (1 + 3.2e-5) = 0.2 * 0.0821583836 * 0.001000032 = 0.0000164322
#   1 / 0.0018421741 = 542.8364 packets/s * 1460 = 792 541 B/s
PFTK_50MS = 792_541.8


def busy(**fields: Any) -> TCPInfo:
    """A connection that has delivered data (the SYN plus 99 data segments)."""
    fields.setdefault("delivered", 100)
    return snap(rtt=50_000, min_rtt=50_000, rto=200_000, bytes_acked=1, **fields)


def test_throughput_is_the_response_function_without_a_delivery_rate() -> None:
    est = estimator()
    assert est.throughput() == 0.0  # nothing known
    est.on_info(busy(), 1.0)
    assert est.throughput() == pytest.approx(CUBIC_50MS, rel=1e-6)


def test_a_delayed_ack_newreno_link_is_costed_with_the_papers_formula() -> None:
    est = LinkEstimator("b", MetricSettings(), congestion="newreno", segments_per_ack=2)
    est.on_info(busy(), 1.0)
    assert est.throughput() == pytest.approx(PFTK_50MS, rel=1e-6)


def test_the_snapshot_names_the_response_function() -> None:
    est = estimator()
    est.on_info(busy(), 1.0)
    assert est.throughput() == pytest.approx(CUBIC_50MS, rel=1e-6)
    # Linux calls NewReno "reno": the same response function as tcpstack's "newreno".
    for name in ("reno", "newreno"):
        est.on_info(attrs.evolve(busy(), congestion=name), 2.0)
        assert est.congestion == "newreno"
        assert est.throughput() == pytest.approx(
            tcp_throughput(1460, 0.05, 0.2, 0.001, congestion="newreno", b=1), rel=1e-12
        )
    # An algorithm without a response function here keeps the last known one.
    est.on_info(attrs.evolve(busy(), congestion="bbr"), 3.0)
    assert est.congestion == "newreno"


def test_throughput_is_the_smaller_of_delivery_rate_and_pftk() -> None:
    est = estimator()
    est.on_info(busy(delivery_rate=500_000), 1.0)
    assert est.throughput() == 500_000.0
    est.on_info(busy(delivery_rate=2_000_000), 2.0)
    assert est.throughput() == pytest.approx(CUBIC_50MS, rel=1e-6)
    # The peer's window caps the response function: 14600 B = 10 packets per 50 ms = 292 000 B/s.
    est.on_info(busy(delivery_rate=2_000_000, snd_wnd=14_600), 3.0)
    assert est.throughput() == pytest.approx(292_000.0)


def test_app_limited_samples_are_ignored() -> None:
    est = estimator()
    # Only app-limited samples: they say what the application offered, not what the path
    # carries, so throughput stays the response function's estimate.
    est.on_info(busy(delivery_rate=1_000, delivery_rate_app_limited=True), 1.0)
    assert est.throughput() == pytest.approx(CUBIC_50MS, rel=1e-6)
    est.on_info(busy(delivery_rate=500_000), 2.0)
    est.on_info(busy(delivery_rate=100_000, delivery_rate_app_limited=True), 3.0)
    assert est.throughput() == 500_000.0
    # An app-limited sample above the estimate is still a lower bound on capacity: it raises it.
    est.on_info(busy(delivery_rate=600_000, delivery_rate_app_limited=True), 4.0)
    assert est.throughput() == 600_000.0


def test_the_handshakes_rate_sample_is_not_the_links_throughput() -> None:
    # What a peer link's first snapshots carry (tcpstack, 20 ms link): the SYN's delivery,
    # one sequence number over a round trip, reported as 50 B/s and not flagged app-limited;
    # then the Hello and probes, app-limited samples of a few kB/s. Neither measured what the
    # path can carry, so neither may be the advertised throughput: it is the response function.
    est = estimator()
    hello = snap(rtt=20_000, min_rtt=20_000, rto=200_000, delivered=1)
    est.on_info(attrs.evolve(hello, delivery_rate=50), 0.02)
    expected = tcp_throughput(1460, 0.02, 0.2, 0.001)
    assert est.throughput() == pytest.approx(expected, rel=1e-12)
    for t, rate, delivered in ((1.0, 3_199, 2), (2.0, 5_699, 5)):
        est.on_info(
            attrs.evolve(hello, delivery_rate=rate, delivery_rate_app_limited=True,
                         delivered=delivered), t,
        )
        assert est.throughput() == pytest.approx(expected, rel=1e-12)
    # A data sample that filled the window is a measurement, and caps the figure.
    est.on_info(attrs.evolve(hello, delivery_rate=40_000, delivered=60), 3.0)
    assert est.throughput() == 40_000.0
    # A reconnect's handshake sample does not replace it either.
    est.on_info(attrs.evolve(hello, delivery_rate=45), 4.0, epoch=2)
    assert est.throughput() == 40_000.0
    assert est.advert(4.0).throughput == 40_000.0


def test_throughput_follows_loss() -> None:
    est = estimator(loss_window=100, loss_alpha=1.0)
    est.on_info(busy(delivery_rate=2_000_000, data_segs_out=80, total_retrans=20), 1.0)
    # p = 0.2, RTT 50 ms, T0 200 ms, CUBIC b = 1: W = max(1.053829 * 0.25**0.75 = 0.372585,
    # sqrt(3 / 0.4) = 2.738613) = 2.738613, Wpeak = 3.221897, min(1, 3 / Wpeak) = 0.931125;
    # 0.05 / 2.738613 + 0.2 * 0.931125 * 0.2 * (1 + 1.28) = 0.0182574 + 0.0849186 = 0.1031760
    # -> 9.692176 packets/s * 1460 = 14 150.5 B/s.
    assert est.loss() == pytest.approx(0.2)
    assert est.throughput() == pytest.approx(14_150.5, rel=1e-5)


# -- availability, samples, age ----------------------------------------------------------------


def test_up_down() -> None:
    est = estimator(down_after=3.0)
    assert not est.quality(0.0).up  # not connected yet
    est.set_up(True, 10.0)
    assert est.quality(13.0).up and not est.quality(13.01).up  # nothing heard for 3 s
    est.on_frame(12.0)
    assert est.quality(15.0).up and not est.quality(15.01).up
    # A snapshot whose last ACK arrived 500 ms ago: heard at 19.5.
    est.on_info(
        snap(bytes_acked=1, data_segs_in=1, last_ack_recv=500, last_data_recv=4000), 20.0
    )
    assert est.quality(22.5).up and not est.quality(22.51).up
    # Reading our own state proves nothing about the peer; nor do the 0 ms ages tcpstack
    # reports for segments that never arrived (no data received, nothing acknowledged).
    est.on_info(snap(segs_in=3, last_ack_recv=0, last_data_recv=0), 30.0, epoch=2)
    assert not est.quality(30.0).up
    est.on_probe_rtt(0.05, 31.0)
    assert est.quality(31.0).up
    est.set_up(False, 32.0)
    assert not est.quality(32.0).up and est.changed_at == 32.0
    est.on_frame(32.5)
    assert not est.quality(32.5).up  # down until the connection is up again


def test_closed_connection_is_down() -> None:
    est = estimator()
    est.set_up(True, 0.0)
    est.on_info(snap(state=7, segs_in=5), 0.5)  # Linux TCP_CLOSE: reset or timed out
    assert not est.quality(0.5).up and est.changed_at == 0.5


def test_samples_age_info_and_advert() -> None:
    est = estimator()
    q = est.quality(0.0)
    assert q.samples == 0 and q.age == math.inf and q.info is None
    first = busy(data_segs_in=3)
    est.set_up(True, 1.0)
    est.on_info(first, 1.0)
    est.on_probe_rtt(0.05, 2.0)
    q = est.quality(2.5)
    assert q.samples == 2 and q.age == pytest.approx(0.5) and q.info is first
    assert q.peer == "b" and q.up
    assert est.advert(2.5) == LinkAdvert("b", q.latency, q.loss, q.throughput, True)


def test_a_loss_episode_is_forgotten_after_the_horizon_on_a_quiet_link() -> None:
    # 100 segments with 10 retransmissions, then the link carries only probes: one segment
    # a second. Within the horizon the episode dominates the window; after it only the
    # probes count, and the EWMA walks down to the floor instead of staying at ~10 %.
    est = estimator(loss_horizon=10.0, loss_alpha=0.25)
    est.on_info(snap(data_segs_out=100, total_retrans=10), 1.0)
    first, retrans = 100, 10
    for t in range(2, 40):
        first += 1
        est.on_info(snap(data_segs_out=first, total_retrans=retrans), float(t))
        if t == 10:
            within = est.quality(float(t)).loss
    assert within > 0.05  # the episode still counts inside the horizon
    assert est.quality(39.0).loss == pytest.approx(0.001)  # the floor, once forgotten


def test_without_the_horizon_the_window_would_remember() -> None:
    # The same history with a horizon longer than the run: the episode is still in the window.
    est = estimator(loss_horizon=1000.0, loss_alpha=0.25)
    est.on_info(snap(data_segs_out=100, total_retrans=10), 1.0)
    for t in range(2, 40):
        est.on_info(snap(data_segs_out=100 + t - 1, total_retrans=10), float(t))
    assert est.quality(39.0).loss > 0.05
