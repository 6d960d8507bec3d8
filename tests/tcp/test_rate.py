"""Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation, Linux tcp_rate.c)."""

from __future__ import annotations

import pytest

from tcpstack.tcp.rate import RateSample, RateSampler
from tcpstack.tcp.scoreboard import Scoreboard

MSS = 1460
ISS = 5_000


class Flow:
    """A sender (scoreboard + sampler) whose ACKs the test schedules by hand."""

    def __init__(self, *, handshake: bool = True) -> None:
        self.sb = Scoreboard()
        self.rate = RateSampler()
        self.nxt = ISS
        if handshake:
            # The SYN (one sequence number below ISS here) and its ACK, before t = 0: the
            # connection starts marked app-limited and this first sample clears the mark.
            self.sb.on_sent(ISS - 1, ISS, -0.1, retransmit=False, rate=self.rate)
            self.sb.on_ack(ISS, [], -0.05, MSS, rate=self.rate)
            self.syn_sample = self.rate.sample(-0.05)
            self.base = self.rate.delivered
        else:
            self.base = 0

    def send(self, now: float, n: int = MSS) -> None:
        self.sb.on_sent(self.nxt, self.nxt + n, now, retransmit=False, rate=self.rate)
        self.nxt += n

    def ack(
        self,
        una: int,
        now: float,
        blocks: list[tuple[int, int]] | None = None,
        *,
        min_rtt: float | None = None,
        is_sack_reneg: bool = False,
    ) -> RateSample:
        self.sb.on_ack(una, blocks or [], now, MSS, rate=self.rate)
        return self.rate.sample(now, min_rtt=min_rtt, is_sack_reneg=is_sack_reneg)


def test_steady_stream_gives_its_rate() -> None:
    # One MSS every millisecond, each ACKed 50 ms after it was sent: 1.46 MB/s.
    period, rtt, n = 0.001, 0.050, 400
    f = Flow()
    samples = []
    for k in range(n + 50):
        now = k * period
        if k >= 50:
            samples.append(f.ack(ISS + (k - 50 + 1) * MSS, now))
        if k < n:
            f.send(now)
    steady = samples[60:]
    assert steady and all(s.valid for s in steady)
    for s in steady:
        assert s.delivery_rate == pytest.approx(MSS / period, rel=1e-6)
        assert s.interval == pytest.approx(rtt, rel=1e-6)
        assert s.delivered == 50 * MSS
        assert s.acked_sacked == MSS and not s.is_app_limited
    assert f.rate.delivery_rate == pytest.approx(MSS / period, rel=1e-6)
    assert f.rate.delivered - f.base == n * MSS


def test_rate_is_bounded_by_the_send_phase_under_ack_compression() -> None:
    # Ten segments sent 10 ms apart, ACKs held back and released together: the ACK phase
    # alone would suggest an absurd rate; the send phase bounds it (interval = max of both).
    f = Flow()
    for k in range(10):
        f.send(k * 0.010)
    f.ack(ISS + MSS, 0.100)  # first ACK, 100 ms after the first send
    s = f.ack(ISS + 10 * MSS, 0.1001)  # the other nine in a burst
    assert s.valid
    assert s.send_interval == pytest.approx(0.090)
    assert s.ack_interval == pytest.approx(0.1001)
    assert s.interval == pytest.approx(0.1001)
    assert s.delivered == 10 * MSS
    # And the converse: a burst sent at once but ACKed spread out uses the ACK phase.
    g = Flow()
    for _ in range(10):
        g.send(0.0)
    g.ack(ISS + MSS, 0.050)
    s = g.ack(ISS + 10 * MSS, 0.095)
    assert s.send_interval == pytest.approx(0.0)
    assert s.interval == pytest.approx(0.095)


def test_a_new_connection_starts_app_limited_until_its_first_sample() -> None:
    # Linux's tcp_init_sock sets app_limited = ~0U: what is sent before the first ACK (the SYN)
    # measures nothing about the path, so its sample is flagged, and the flag then clears.
    f = Flow(handshake=False)
    assert f.rate.app_limited != 0
    f.send(0.0, 1)
    f.sb.on_ack(ISS + 1, [], 0.05, MSS, rate=f.rate)
    s = f.rate.sample(0.05)
    assert s.valid and s.is_app_limited and f.rate.rate_app_limited
    assert f.rate.app_limited == 0
    # Data sent after that first sample is network-limited unless marked.
    for k in range(4):
        f.send(0.06 + k * 0.001)
    s = f.ack(ISS + 1 + 4 * MSS, 0.11)
    assert s.valid and not s.is_app_limited and not f.rate.rate_app_limited


def test_idle_time_is_not_counted() -> None:
    f = Flow()
    f.send(0.0)
    f.ack(ISS + MSS, 0.05)
    # Idle for ten seconds; the next flight restarts the sample clock.
    f.send(10.0)
    s = f.ack(ISS + 2 * MSS, 10.05)
    assert s.interval == pytest.approx(0.05)
    assert s.delivery_rate == pytest.approx(MSS / 0.05)


def test_app_limited_marking_and_retention() -> None:
    f = Flow()
    # A network-limited phase: 10 segments in 10 ms, ACKed over 10 ms, 50 ms later.
    for k in range(10):
        f.send(k * 0.001)
    for k in range(10):
        last = f.ack(ISS + (k + 1) * MSS, 0.050 + k * 0.001)
    assert not last.is_app_limited
    good_rate = f.rate.delivery_rate
    assert good_rate > 0
    # The application runs dry with nothing in flight: the connection is app-limited.
    assert f.rate.on_app_limited(0, unsent_bytes=0, mss=MSS, cwnd=10 * MSS)
    assert f.rate.app_limited == f.rate.delivered
    # A trickle: one segment every 100 ms. Its samples are app-limited and lower: the
    # retained rate (tcpi_delivery_rate) keeps the network-limited one.
    f.send(0.2)
    s = f.ack(ISS + 11 * MSS, 0.25)
    assert s.valid and s.is_app_limited
    assert s.delivery_rate < good_rate
    assert f.rate.delivery_rate == pytest.approx(good_rate)
    assert not f.rate.rate_app_limited
    # Once the data sent after the mark is delivered the bubble is gone: samples of data sent
    # afterwards are not app-limited, and replace the retained rate even when lower.
    assert f.rate.app_limited == 0
    f.send(0.3)
    s = f.ack(ISS + 12 * MSS, 0.35)
    assert not s.is_app_limited
    assert f.rate.delivery_rate == pytest.approx(s.delivery_rate) and s.delivery_rate < good_rate


def test_app_limited_sample_higher_than_retained_is_kept() -> None:
    f = Flow()
    f.send(0.0)
    f.ack(ISS + MSS, 1.0)  # a slow first sample: 1460 B/s
    f.rate.mark_app_limited(0)
    f.send(1.0)
    s = f.ack(ISS + 2 * MSS, 1.01)
    assert s.is_app_limited and s.delivery_rate > MSS / 1.0
    assert f.rate.delivery_rate == pytest.approx(s.delivery_rate)
    assert f.rate.rate_app_limited


def test_not_app_limited_when_cwnd_limited_or_data_waits() -> None:
    r = RateSampler()
    initial = r.app_limited  # a new connection's mark, cleared by its first sample
    assert not r.on_app_limited(10 * MSS, unsent_bytes=0, mss=MSS, cwnd=10 * MSS)  # cwnd full
    assert not r.on_app_limited(0, unsent_bytes=MSS, mss=MSS, cwnd=10 * MSS)  # data to send
    assert not r.on_app_limited(0, unsent_bytes=0, mss=MSS, cwnd=10 * MSS, lost_segments=1)
    assert r.app_limited == initial  # none of these marked it
    assert r.on_app_limited(0, unsent_bytes=0, mss=MSS, cwnd=10 * MSS)
    assert r.app_limited == 1  # never 0 while marked, even before anything was delivered


def test_invalid_samples() -> None:
    f = Flow(handshake=False)
    f.send(0.0)
    f.send(0.0)
    s = f.ack(ISS, 0.01)  # nothing delivered
    assert not s.valid and s.delivery_rate == 0.0 and s.acked_sacked == 0
    s = f.ack(ISS + MSS, 0.02, is_sack_reneg=True)
    assert not s.valid and s.acked_sacked == MSS
    s = f.ack(ISS + 2 * MSS, 0.021, min_rtt=0.05)  # interval below min RTT: ACK compression
    assert not s.valid
    assert f.rate.delivery_rate == 0.0  # nothing valid was ever retained


def test_sample_taken_from_most_recently_sent_segment() -> None:
    f = Flow(handshake=False)
    for k in range(4):
        f.send(k * 0.01)
    # Segment 4 (sent last) is SACKed, segment 1 cumulatively acked in the same ACK.
    s = f.ack(ISS + MSS, 0.2, blocks=[(ISS + 3 * MSS, ISS + 4 * MSS)])
    assert s.prior_delivered == 0
    assert s.send_interval == pytest.approx(0.03)  # seg 4's send minus the flight's first send
    assert s.delivered == 2 * MSS
    assert f.rate.first_tx_time == pytest.approx(0.03)


def test_retransmitted_sample_is_flagged() -> None:
    f = Flow()
    f.send(0.0)
    f.sb.on_sent(ISS, ISS + MSS, 0.3, retransmit=True, rate=f.rate)
    s = f.ack(ISS + MSS, 0.35)
    assert s.is_retrans and s.delivered == MSS
