"""The congestion-control registry and NewReno's RFC 5681 / RFC 3465 / RFC 6582 window rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from tcpstack.tcp.congestion import (
    TCP_INFINITE_SSTHRESH,
    CongestionControl,
    available_congestion_controls,
    create_congestion_control,
    register_congestion_control,
    unregister_congestion_control,
)
from tcpstack.tcp.cubic import Cubic
from tcpstack.tcp.newreno import NewReno

MSS = 1000
IW = 10 * MSS


def ack_round(
    cc: CongestionControl, now: float, *, per_ack: int = 1, cwnd_limited: bool = True
) -> int:
    """ACK one full window (cwnd bytes as of the round start) in ACKs of ``per_ack`` segments.
    Returns the number of ACKs sent."""
    window = cc.cwnd
    acked = 0
    acks = 0
    while acked < window:
        chunk = min(per_ack * MSS, window - acked)
        acked += chunk
        acks += 1
        cc.on_ack(chunk, window - acked, now, rtt=0.1, cwnd_limited=cwnd_limited)
    return acks


# -- registry ---------------------------------------------------------------------------------


class Fixed(CongestionControl):
    """A trivial algorithm a test registers: cwnd never moves."""

    name: ClassVar[str] = "fixed-test"

    def on_ack(
        self,
        acked_bytes: int,
        bytes_in_flight: int,
        now: float,
        *,
        rtt: float | None,
        cwnd_limited: bool,
    ) -> None:
        pass

    def on_congestion_event(self, bytes_in_flight: int, now: float) -> None:
        self.ssthresh = self.cwnd


@pytest.fixture
def fixed_registered() -> Iterator[None]:
    register_congestion_control(Fixed.name, Fixed)
    try:
        yield
    finally:
        unregister_congestion_control(Fixed.name)


def test_builtins_are_registered() -> None:
    names = available_congestion_controls()
    assert {"newreno", "cubic"} <= set(names)
    assert names == sorted(names)
    assert isinstance(create_congestion_control("newreno", MSS, IW), NewReno)
    cubic = create_congestion_control("cubic", MSS, IW)
    assert isinstance(cubic, Cubic) and cubic.hystart is not None


def test_create_sets_initial_state() -> None:
    for name in ("newreno", "cubic"):
        cc = create_congestion_control(name, 1460, 14600)
        assert (cc.cwnd, cc.ssthresh, cc.mss) == (14600, TCP_INFINITE_SSTHRESH, 1460)
        assert cc.in_slow_start
        assert cc.state_dict()["algorithm"] == name


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown congestion control 'bbr'") as info:
        create_congestion_control("bbr", MSS, IW)
    assert "cubic" in str(info.value) and "newreno" in str(info.value)


def test_custom_algorithm_is_creatable(fixed_registered: None) -> None:
    assert "fixed-test" in available_congestion_controls()
    cc = create_congestion_control("fixed-test", MSS, 3 * MSS)
    assert isinstance(cc, Fixed) and cc.cwnd == 3 * MSS
    cc.on_ack(MSS, 0, 0.0, rtt=None, cwnd_limited=True)
    assert cc.cwnd == 3 * MSS
    # The shared RFC 5681 timeout rule applies to it too.
    cc.on_retransmission_timeout(8 * MSS, 1.0)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 4 * MSS)


def test_unregister_removes(fixed_registered: None) -> None:
    unregister_congestion_control("fixed-test")
    with pytest.raises(ValueError, match="unknown congestion control"):
        create_congestion_control("fixed-test", MSS, IW)
    register_congestion_control(Fixed.name, Fixed)  # for the fixture's cleanup


def test_duplicate_and_bad_registrations_rejected(fixed_registered: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_congestion_control("fixed-test", Fixed)
    with pytest.raises(ValueError, match="non-empty word"):
        register_congestion_control("", Fixed)
    with pytest.raises(TypeError, match="callable"):
        register_congestion_control("x", 42)  # type: ignore[arg-type]


def test_factory_must_return_a_controller() -> None:
    register_congestion_control("broken-test", lambda mss, iw: object())  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(TypeError, match="not a CongestionControl"):
            create_congestion_control("broken-test", MSS, IW)
    finally:
        unregister_congestion_control("broken-test")


def test_options_go_to_the_algorithms_that_take_them() -> None:
    cubic = create_congestion_control("cubic", MSS, IW, hystart=False)
    assert isinstance(cubic, Cubic) and cubic.hystart is None
    # hystart is a CUBIC tunable; NewReno ignores it, as Linux ignores tcp_cubic's parameters.
    assert isinstance(create_congestion_control("newreno", MSS, IW, hystart=False), NewReno)
    with pytest.raises(ValueError, match="unknown congestion control option.*hystrat"):
        create_congestion_control("cubic", MSS, IW, hystrat=False)


@pytest.mark.parametrize(("mss", "iw"), [(0, IW), (MSS, 0), (-5, IW)])
def test_bad_sizes_rejected(mss: int, iw: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        create_congestion_control("newreno", mss, iw)


def test_bad_event_arguments_rejected() -> None:
    cc = NewReno(MSS, IW)
    with pytest.raises(ValueError, match="acked_bytes"):
        cc.on_ack(-1, 0, 0.0, rtt=None, cwnd_limited=True)
    with pytest.raises(ValueError, match="now"):
        cc.on_ack(MSS, 0, float("nan"), rtt=None, cwnd_limited=True)
    with pytest.raises(TypeError, match="bytes_in_flight"):
        cc.on_congestion_event(1.5, 0.0)  # type: ignore[arg-type]
    assert cc.cwnd == IW


# -- NewReno: slow start ------------------------------------------------------------------------


@pytest.mark.parametrize("per_ack", [1, 2])
def test_slow_start_doubles_per_rtt(per_ack: int) -> None:
    """RFC 3465 L=2: both an ACK per segment and a delayed ACK per two segments double cwnd."""
    cc = NewReno(MSS, IW)
    for round_no in range(4):
        before = cc.cwnd
        ack_round(cc, round_no * 0.1, per_ack=per_ack)
        assert cc.cwnd == 2 * before
    assert cc.cwnd == IW * 16


def test_abc_limits_a_stretch_ack_to_two_segments() -> None:
    cc = NewReno(MSS, IW)
    cc.on_ack(8 * MSS, 0, 0.0, rtt=None, cwnd_limited=True)
    assert cc.cwnd == IW + 2 * MSS
    cc.on_ack(300, 0, 0.0, rtt=None, cwnd_limited=True)  # byte counting: partial segments count
    assert cc.cwnd == IW + 2 * MSS + 300


def test_slow_start_stops_at_ssthresh_and_carries_over() -> None:
    cc = NewReno(MSS, IW)
    cc.ssthresh = IW + MSS // 2
    cc.on_ack(2 * MSS, 0, 0.0, rtt=None, cwnd_limited=True)
    assert cc.cwnd == IW + MSS // 2 and not cc.in_slow_start
    # The 1.5 MSS beyond ssthresh went to congestion avoidance's byte counter.
    assert cc.state_dict()["bytes_acked"] == 3 * MSS // 2


def test_no_growth_when_not_cwnd_limited() -> None:
    cc = NewReno(MSS, IW)
    ack_round(cc, 0.0, cwnd_limited=False)
    assert cc.cwnd == IW
    cc.ssthresh = IW
    for i in range(30):
        ack_round(cc, 0.1 * i, cwnd_limited=False)
    assert cc.cwnd == IW


# -- NewReno: congestion avoidance --------------------------------------------------------------


@pytest.mark.parametrize("per_ack", [1, 2, 3])
def test_congestion_avoidance_adds_one_mss_per_rtt(per_ack: int) -> None:
    cc = NewReno(MSS, 20 * MSS)
    cc.ssthresh = 20 * MSS
    for round_no in range(10):
        before = cc.cwnd
        ack_round(cc, round_no * 0.1, per_ack=per_ack)
        assert cc.cwnd == before + MSS
    assert cc.cwnd == 30 * MSS


def test_congestion_event_sets_ssthresh_to_half_the_flight() -> None:
    cc = NewReno(MSS, 40 * MSS)
    cc.on_congestion_event(30 * MSS, 1.0)
    assert cc.ssthresh == 15 * MSS
    assert cc.cwnd == 40 * MSS  # the engine's PRR reduces cwnd during recovery
    cc.on_recovery_exit(1.5)
    assert cc.cwnd == 15 * MSS and not cc.in_slow_start


def test_congestion_event_floor_is_two_segments() -> None:
    cc = NewReno(MSS, IW)
    cc.on_congestion_event(MSS, 0.0)
    assert cc.ssthresh == 2 * MSS


def test_recovery_exit_never_raises_cwnd() -> None:
    cc = NewReno(MSS, 40 * MSS)
    cc.on_congestion_event(40 * MSS, 0.0)
    cc.cwnd = 12 * MSS  # PRR took it below ssthresh
    cc.on_recovery_exit(0.5)
    assert cc.cwnd == 12 * MSS and cc.ssthresh == 20 * MSS
    cc.cwnd = 0  # an engine that zeroed it still gets one segment back
    cc.on_recovery_exit(0.6)
    assert cc.cwnd == MSS


# -- NewReno: timeouts, idle, undo, MSS ------------------------------------------------------


def test_rto_sets_loss_window_and_ssthresh() -> None:
    cc = NewReno(MSS, 40 * MSS)
    cc.on_retransmission_timeout(30 * MSS, 2.0)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 15 * MSS)
    assert cc.in_slow_start


def test_repeated_rto_without_progress_keeps_ssthresh() -> None:
    """RFC 5681 section 3.1: a backed-off retransmission timing out again does not halve the
    (now tiny) flight a second time."""
    cc = NewReno(MSS, 40 * MSS)
    cc.on_retransmission_timeout(40 * MSS, 1.0)
    cc.on_retransmission_timeout(MSS, 3.0)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 20 * MSS)
    # After new data is acknowledged a later timeout is a new event.
    cc.on_ack(MSS, 0, 3.2, rtt=None, cwnd_limited=True)
    cc.on_retransmission_timeout(4 * MSS, 5.0)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 2 * MSS)


def test_idle_restart_goes_back_to_initial_window() -> None:
    cc = NewReno(MSS, IW)
    cc.cwnd = 64 * MSS
    cc.ssthresh = 40 * MSS
    cc.on_idle_restart(idle=0.5, rto=1.0, now=10.0)  # not idle longer than the RTO
    assert cc.cwnd == 64 * MSS
    cc.on_idle_restart(idle=1.5, rto=1.0, now=10.0)
    assert cc.cwnd == IW
    assert cc.ssthresh == 48 * MSS  # 3/4 of the pre-idle cwnd remembered (RFC 2861, Linux)


def test_idle_restart_never_raises_a_small_cwnd() -> None:
    cc = NewReno(MSS, IW)
    cc.cwnd = 4 * MSS
    cc.on_idle_restart(idle=5.0, rto=1.0, now=10.0)
    assert cc.cwnd == 4 * MSS


def test_undo_restores_prior_window() -> None:
    cc = NewReno(MSS, 40 * MSS)
    prior = (cc.cwnd, cc.ssthresh)
    cc.on_congestion_event(40 * MSS, 0.0)
    cc.on_recovery_exit(0.3)
    assert cc.cwnd == 20 * MSS
    cc.undo(*prior)
    assert (cc.cwnd, cc.ssthresh) == prior


def test_set_mss_keeps_cwnd_in_segments() -> None:
    cc = NewReno(1460, 14600)
    cc.ssthresh = 20 * 1460
    cc.set_mss(1200)
    assert (cc.cwnd, cc.ssthresh, cc.initial_window) == (12000, 24000, 12000)
    cc.on_ack(10 * 1200, 0, 0.0, rtt=None, cwnd_limited=True)
    assert cc.cwnd == 12000 + 2 * 1200  # ABC now counts in the new MSS
