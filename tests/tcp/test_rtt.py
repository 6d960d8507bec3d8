"""RFC 6298 RTT estimation and RTO (linux and freebsd profiles) and the windowed min filter."""

from __future__ import annotations

import random

import pytest

from tcpstack.tcp.rtt import RttEstimator, WindowedMin

# -- RFC 6298 estimator ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["linux", "freebsd", "rfc6298"])
def test_before_any_sample_rto_is_initial(profile: str) -> None:
    est = RttEstimator(profile=profile, initial_rto=1.0)
    assert (est.srtt, est.rttvar, est.latest_rtt, est.min_rtt) == (None, None, None, None)
    assert est.samples == 0
    assert est.rto == est.base_rto == 1.0


@pytest.mark.parametrize("profile", ["linux", "freebsd"])
def test_first_sample_sets_srtt_and_half_rttvar(profile: str) -> None:
    est = RttEstimator(profile=profile)
    est.on_rtt_sample(0.3, now=1.0)
    assert est.srtt == 0.3 and est.rttvar == 0.15
    assert (est.latest_rtt, est.min_rtt, est.samples) == (0.3, 0.3, 1)
    assert est.rto == pytest.approx(0.3 + 4 * 0.15)  # RFC 6298 2.2 (both floors are below)


def test_subsequent_samples_follow_rfc_6298_exactly() -> None:
    est = RttEstimator(profile="freebsd")
    rng = random.Random(5)
    samples = [rng.uniform(0.01, 0.5) for _ in range(50)]
    srtt, rttvar = samples[0], samples[0] / 2
    est.on_rtt_sample(samples[0], 0.0)
    for i, r in enumerate(samples[1:], 1):
        est.on_rtt_sample(r, float(i))
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)  # RTTVAR first, with the old SRTT
        srtt = 0.875 * srtt + 0.125 * r
        assert est.srtt == pytest.approx(srtt, rel=1e-12)
        assert est.rttvar == pytest.approx(rttvar, rel=1e-12)
        assert est.base_rto == pytest.approx(max(srtt + max(0.001, 4 * rttvar), 0.03), rel=1e-12)
    assert est.samples == 50 and est.min_rtt == min(samples)


def test_linux_rising_rtt_follows_rfc_gains() -> None:
    est = RttEstimator(profile="linux")
    est.on_rtt_sample(0.1, 0.0)
    est.on_rtt_sample(0.2, 0.1)
    assert est.srtt == pytest.approx(0.1125)
    assert est.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)


def test_linux_falling_rtt_moves_mdev_with_gain_1_32() -> None:
    """tcp_rtt_estimator: a sample far below srtt must not inflate the variance like the RFC's
    1/4 gain would."""
    linux, rfc = RttEstimator(profile="linux"), RttEstimator(profile="freebsd")
    for est in (linux, rfc):
        est.on_rtt_sample(0.4, 0.0)
        est.on_rtt_sample(0.4, 0.5)
        est.on_rtt_sample(0.05, 1.0)
    # before the drop: mdev = 0.75 * 0.2 = 0.15; error 0.35 > mdev.
    assert rfc.rttvar == pytest.approx(0.75 * 0.15 + 0.25 * 0.35)
    assert linux.rttvar == pytest.approx(0.15 + (0.35 - 0.15) / 32)
    assert linux.srtt == rfc.srtt == pytest.approx(0.4 - 0.35 / 8)


def test_min_rto_floor_per_profile() -> None:
    """A steady 10 ms path: Linux's RTO floors at srtt + 200 ms, FreeBSD's at 30 ms."""
    linux, freebsd = RttEstimator(profile="linux"), RttEstimator(profile="freebsd")
    for i in range(200):
        linux.on_rtt_sample(0.01, i * 0.01)
        freebsd.on_rtt_sample(0.01, i * 0.01)
    assert linux.rttvar is not None and linux.rttvar < 1e-6
    assert linux.rto == pytest.approx(0.01 + 0.2, abs=1e-4)
    assert freebsd.rto == pytest.approx(0.03)


def test_linux_and_freebsd_differ_as_documented() -> None:
    """A 40 ms first sample: RTO = srtt + max(4*rttvar, min_rto) on Linux = 40 + 200 ms;
    max(srtt + 4*rttvar, min_rto) on FreeBSD = 40 + 80 ms."""
    linux, freebsd = RttEstimator(profile="linux"), RttEstimator(profile="freebsd")
    linux.on_rtt_sample(0.04, 0.0)
    freebsd.on_rtt_sample(0.04, 0.0)
    assert linux.rto == pytest.approx(0.24)
    assert freebsd.rto == pytest.approx(0.12)
    assert RttEstimator(profile="linux").min_rto == 0.2
    assert RttEstimator(profile="freebsd").min_rto == 0.03
    assert RttEstimator(profile="rfc6298").min_rto == 1.0


def test_linux_rto_variance_decays_per_round_trip() -> None:
    """After a jittery phase, Linux lowers the RTO's variance term by a quarter of its excess
    over the round's peak per round trip, not at once."""
    est = RttEstimator(profile="linux")
    now = 0.0
    for r in (0.1, 0.5, 0.1, 0.5):
        est.on_rtt_sample(r, now)
        now += 0.3
    peak = est.rttvar_l
    assert peak > 0.2  # the jitter lifted the variance term above min_rto
    previous = peak
    decays = []
    for _ in range(40):
        est.on_rtt_sample(0.3, now)
        now += 0.05  # several samples per round trip
        if est.rttvar_l < previous:
            decays.append(est.rttvar_l)
        previous = est.rttvar_l
    assert len(decays) >= 3
    assert decays[0] > 0.75 * peak  # no cliff
    assert est.srtt is not None
    assert est.rto == pytest.approx(est.srtt + est.rttvar_l)
    assert est.rttvar_l >= est.min_rto


def test_max_rto_ceiling() -> None:
    est = RttEstimator(profile="linux", max_rto=120.0)
    est.on_rtt_sample(100.0, 0.0)
    assert est.base_rto == 120.0
    assert RttEstimator(initial_rto=3.0, max_rto=2.0, min_rto=0.2).rto == 2.0


def test_backoff_doubles_up_to_max_and_resets() -> None:
    est = RttEstimator(profile="freebsd", max_rto=64.0)
    est.on_rtt_sample(0.5, 0.0)  # rto = 0.5 + 4 * 0.25 = 1.5
    assert est.rto == pytest.approx(1.5)
    expected = 1.5
    for _ in range(5):
        est.on_timeout()
        expected *= 2
        assert est.rto == pytest.approx(expected)
    assert est.backoff == 5
    est.on_timeout()
    assert est.rto == 64.0  # 96 s clamped
    for _ in range(2000):  # long outages stay finite and clamped
        est.on_timeout()
    assert est.rto == 64.0
    est.reset_backoff()
    assert est.backoff == 0 and est.rto == pytest.approx(1.5)


def test_valid_sample_resets_backoff() -> None:
    est = RttEstimator()
    est.on_timeout()
    est.on_timeout()
    assert est.rto == 4.0  # initial 1 s backed off twice
    est.on_rtt_sample(0.1, 5.0)
    assert est.backoff == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profile": "solaris"},
        {"min_rto": 0.0},
        {"initial_rto": -1.0},
        {"max_rto": float("inf")},
        {"min_rto": 5.0, "max_rto": 1.0},
    ],
)
def test_bad_configuration_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RttEstimator(**kwargs)  # type: ignore[arg-type]


def test_bad_samples_rejected() -> None:
    est = RttEstimator()
    for bad in (-0.001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rtt"):
            est.on_rtt_sample(bad, 0.0)
    assert est.samples == 0 and est.srtt is None
    est.on_rtt_sample(0.0, 0.0)  # a zero RTT (virtual time, loopback) is valid
    assert est.rto == pytest.approx(0.2)


# -- windowed minimum ---------------------------------------------------------------------------


def test_windowed_min_tracks_new_minimum_immediately() -> None:
    wm = WindowedMin(10.0)
    assert wm.value is None
    assert wm.update(5.0, 0.0) == 5.0
    assert wm.update(7.0, 1.0) == 5.0
    assert wm.update(3.0, 2.0) == 3.0


def test_windowed_min_expires_old_minimum() -> None:
    wm = WindowedMin(10.0)
    wm.update(1.0, 0.0)
    wm.update(4.0, 3.0)  # 2nd choice (after a quarter window)
    wm.update(6.0, 6.0)  # 3rd choice (after half a window)
    assert wm.value == 1.0
    assert wm.update(8.0, 9.0) == 1.0  # still inside the window
    # At t = 10.5 the 1.0 is out of the window; the 2nd choice takes over.
    assert wm.update(9.0, 10.5) == 4.0
    # Then the 4.0 (taken at 3) expires too.
    assert wm.update(9.0, 13.5) == 6.0
    # Nothing in the window at all: the newest sample is the minimum.
    assert wm.update(12.0, 40.0) == 12.0


def test_windowed_min_matches_brute_force_within_its_guarantee() -> None:
    """Never below the true windowed minimum and never above the largest sample in the window
    (the Nichols filter may be pessimistic after expiry, never optimistic)."""
    rng = random.Random(3)
    window = 5.0
    wm = WindowedMin(window)
    history: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(3000):
        t += rng.expovariate(10.0)
        v = rng.uniform(0.01, 0.2) + (0.1 if rng.random() < 0.5 else 0.0)
        history.append((t, v))
        got = wm.update(v, t)
        inside = [x for ts, x in history if t - ts <= window]
        assert min(inside) <= got <= max(inside)


def test_min_rtt_window_expiry_in_estimator() -> None:
    est = RttEstimator(min_rtt_window=300.0)
    est.on_rtt_sample(0.02, 0.0)
    est.on_rtt_sample(0.05, 100.0)
    est.on_rtt_sample(0.06, 200.0)
    assert est.min_rtt == 0.02
    est.on_rtt_sample(0.07, 301.0)  # Linux tcp_min_rtt_wlen: 300 s
    assert est.min_rtt == 0.05
