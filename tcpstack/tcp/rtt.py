"""Round-trip time estimation and the retransmission timeout (RFC 6298), plus a windowed minimum.

Karn's rule (RFC 6298 section 3) is the caller's job: the engine does not pass samples taken from
retransmitted segments unless the RFC 7323 timestamp echo identifies the transmission. A valid
sample resets the backoff (RFC 6298 section 5.7 and Karn; Linux ``tcp_ack_update_rtt``).

Profiles:

``linux``
    ``tcp_rtt_estimator``/``tcp_set_rto``: srtt and mdev with RFC 6298 gains, except that a
    sample *below* srtt by more than mdev moves mdev with gain 1/32 instead of 1/4 (so a falling
    RTT does not inflate the RTO). The variance term of the RTO is ``rttvar_l``: the largest
    ``4*mdev`` of the current round trip, never below min_rto, and decaying by a quarter of its
    excess once per round trip. RTO = srtt + rttvar_l, i.e. srtt + max(4*mdev, min_rto).
    Linux ends a round when snd_una passes the snd_nxt of the round start; without sequence
    numbers here a round is one srtt of time. min_rto defaults to 200 ms (``TCP_RTO_MIN``).
``freebsd``
    RFC 6298 literally: RTO = max(srtt + max(G, 4*rttvar), min_rto), with G = 1 ms (hz=1000)
    and min_rto 30 ms (``net.inet.tcp.rexmit_min``). ``slop`` (``net.inet.tcp.rexmit_slop``,
    ``Profile.rto_slop``) is added to every RTO computed after the initial one, then clamped to
    [min_rto, max_rto], as FreeBSD's TCPT_RANGESET does: SYN timeouts of 1, 2.2, 4.2 ... s.
``rfc6298``
    As ``freebsd`` with the RFC's own 1 s floor (section 2.4).
"""

from __future__ import annotations

import math

__all__ = ["PROFILE_MIN_RTO", "RttEstimator", "WindowedMin"]

ALPHA = 1 / 8  # RFC 6298 section 2.3
BETA = 1 / 4
K = 4

PROFILE_MIN_RTO: dict[str, float] = {"linux": 0.2, "freebsd": 0.03, "rfc6298": 1.0}
_CLOCK_GRANULARITY: dict[str, float] = {"linux": 0.001, "freebsd": 0.001, "rfc6298": 0.001}
# Backoff beyond this cannot matter (2**64 * any sane min_rto exceeds every max_rto) and keeps
# the float arithmetic finite.
_MAX_BACKOFF_EXPONENT = 64

# Linux tcp_min_rtt_wlen: the min_rtt filter remembers 300 s.
MIN_RTT_WINDOW = 300.0


class WindowedMin:
    """Running minimum over a sliding time window, Kathleen Nichols' algorithm as in Linux's
    ``lib/win_minmax.c``: three samples (best, second best from a later sub-window, third best
    from a later one still) give a windowed minimum in O(1) time and space.

    The answer is exact when a new minimum arrives and otherwise may be slightly pessimistic
    (a larger value than the true windowed minimum) after the best sample expires, never
    optimistic.
    """

    # Three (time, value) choices as six slots, not a list of tuples: one object per
    # connection instead of three, and no tuple made per RTT sample.
    __slots__ = ("window", "_t0", "_v0", "_t1", "_v1", "_t2", "_v2")

    def __init__(self, window: float) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        self.window = window
        self._v0: float | None = None  # None: no sample yet
        self._t0 = self._t1 = self._t2 = 0.0
        self._v1 = self._v2 = 0.0

    @property
    def value(self) -> float | None:
        return self._v0

    def reset(self, now: float, value: float) -> float:
        self._t0 = self._t1 = self._t2 = now
        self._v0 = self._v1 = self._v2 = value
        return value

    def update(self, value: float, now: float) -> float:
        """Add a sample taken at ``now``; returns the windowed minimum."""
        v0 = self._v0
        if v0 is None or value <= v0 or now - self._t2 > self.window:
            return self.reset(now, value)  # new minimum, or all three choices expired
        if value <= self._v1:
            self._t1 = self._t2 = now
            self._v1 = self._v2 = value
        elif value <= self._v2:
            self._t2, self._v2 = now, value
        return self._subwin_update(now, value)

    def _subwin_update(self, now: float, value: float) -> float:
        dt = now - self._t0
        window = self.window
        if dt > window:
            # The best expired: promote the 2nd and 3rd choices. The 2nd may have expired too
            # (the 3rd was checked on entry), hence the second shift.
            self._t0, self._v0 = self._t1, self._v1
            self._t1, self._v1 = self._t2, self._v2
            self._t2, self._v2 = now, value
            if now - self._t0 > window:
                self._t0, self._v0 = self._t1, self._v1
                self._t1, self._v1 = now, value
        elif self._t1 == self._t0 and dt > window / 4:
            # A quarter window without a new 2nd choice: take one from the 2nd quarter.
            self._t1 = self._t2 = now
            self._v1 = self._v2 = value
        elif self._t2 == self._t1 and dt > window / 2:
            # Half a window without a new 3rd choice: take one from the last half.
            self._t2, self._v2 = now, value
        return self._v0  # type: ignore[return-value]  # set by the first sample


# Argument tuples already validated: every connection of a stack passes the same ones, and the
# checks cost more than the rest of the constructor (bounded: cleared when full).
_VALIDATED: set[tuple[str, float, float, float, float]] = set()


def _validate(initial_rto: float, min_rto: float, max_rto: float, slop: float) -> None:
    for name, value in (
        ("initial_rto", initial_rto),
        ("min_rto", min_rto),
        ("max_rto", max_rto),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if min_rto > max_rto:
        raise ValueError(f"min_rto {min_rto} exceeds max_rto {max_rto}")
    if not (math.isfinite(slop) and slop >= 0):
        raise ValueError(f"slop must be a finite number of seconds >= 0, got {slop!r}")


class RttEstimator:
    """RFC 6298 SRTT/RTTVAR and RTO with exponential backoff; see the module for profiles."""

    # Slots: one per connection, made on every connect and accept (a dict per instance costs
    # both the construction time and memory of each idle or TIME-WAIT connection).
    __slots__ = (
        "slop", "profile", "initial_rto", "min_rto", "max_rto", "granularity", "srtt", "rttvar",
        "latest_rtt", "samples", "backoff", "_min_rtt", "rttvar_l", "_mdev_max", "_round_end",
    )

    def __init__(
        self,
        *,
        profile: str = "linux",
        initial_rto: float = 1.0,
        min_rto: float | None = None,
        max_rto: float = 120.0,
        min_rtt_window: float = MIN_RTT_WINDOW,
        slop: float = 0.0,
    ) -> None:
        if profile not in PROFILE_MIN_RTO:
            raise ValueError(
                f"unknown RTO profile {profile!r}; available: {', '.join(sorted(PROFILE_MIN_RTO))}"
            )
        min_rto = PROFILE_MIN_RTO[profile] if min_rto is None else min_rto
        key = (profile, initial_rto, min_rto, max_rto, slop)
        if key not in _VALIDATED:
            _validate(initial_rto, min_rto, max_rto, slop)
            if len(_VALIDATED) >= 256:
                _VALIDATED.clear()
            _VALIDATED.add(key)
        self.slop = slop
        self.profile = profile
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = _CLOCK_GRANULARITY[profile]
        self.srtt: float | None = None
        self.rttvar: float | None = None  # mean deviation (Linux: mdev, reported as tcpi_rttvar)
        self.latest_rtt: float | None = None
        self.samples = 0
        self.backoff = 0
        self._min_rtt = WindowedMin(min_rtt_window)
        # Linux only: the RTO's variance term (rttvar_us) and this round's peak 4*mdev.
        self.rttvar_l = 0.0
        self._mdev_max = 0.0
        self._round_end = 0.0

    @property
    def min_rtt(self) -> float | None:
        return self._min_rtt.value

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        """A valid RTT measurement (RFC 6298 sections 2.2 and 2.3, alpha=1/8, beta=1/4)."""
        if not (math.isfinite(rtt) and rtt >= 0):
            raise ValueError(f"rtt must be a finite number of seconds >= 0, got {rtt!r}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        self.latest_rtt = rtt
        self.samples += 1
        self._min_rtt.update(rtt, now)
        self.backoff = 0
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
            if self.profile == "linux":
                self.rttvar_l = self._mdev_max = max(K * self.rttvar, self.min_rto)
                self._round_end = now + rtt
            return
        error = rtt - self.srtt
        if self.profile == "linux":
            self._linux_update(error, now)
        else:
            # The RFC updates RTTVAR with the old SRTT, then SRTT.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(error)
            self.srtt = self.srtt + ALPHA * error
        # Keep the estimates finite and bounded whatever the samples were.
        # Conditional expressions, not min() (keyword parsing on every call in CPython 3.11).
        if self.srtt > self.max_rto:
            self.srtt = self.max_rto
        if self.rttvar > self.max_rto:
            self.rttvar = self.max_rto

    def _linux_update(self, error: float, now: float) -> None:
        assert self.srtt is not None and self.rttvar is not None
        self.srtt += ALPHA * error
        mdev = self.rttvar
        if error < 0 and -error > mdev:
            # tcp_rtt_estimator: the RTT fell by more than mdev; gain 1/32 instead of 1/4.
            mdev += (-error - mdev) * BETA / 8
        else:
            mdev += (abs(error) - mdev) * BETA
        self.rttvar = mdev
        if K * mdev > self._mdev_max:
            self._mdev_max = K * mdev
            self.rttvar_l = max(self.rttvar_l, self._mdev_max)
        if now >= self._round_end:
            if self._mdev_max < self.rttvar_l:
                self.rttvar_l -= (self.rttvar_l - self._mdev_max) / 4
            self._round_end = now + self.srtt
            self._mdev_max = self.min_rto

    @property
    def base_rto(self) -> float:
        """The RTO before backoff."""
        if self.srtt is None or self.rttvar is None:
            rto = self.initial_rto
        elif self.profile == "linux":
            rto = self.srtt + self.rttvar_l
        else:
            rto = max(self.srtt + max(self.granularity, K * self.rttvar), self.min_rto)
        # Not min(): builtin min/max parse keyword arguments on every call in CPython 3.11,
        # and the RTO is read whenever a timer is armed.
        return rto if rto < self.max_rto else self.max_rto

    @property
    def rto(self) -> float:
        """min(base_rto * 2**backoff, max_rto) (RFC 6298 sections 5.5 and 2.5), plus ``slop``."""
        backoff = self.backoff
        rto = self.base_rto
        if backoff:
            rto *= 2.0 ** min(backoff, _MAX_BACKOFF_EXPONENT)
        if rto > self.max_rto:
            rto = self.max_rto
        if self.slop and (self.backoff or self.srtt is not None):
            # FreeBSD TCPT_RANGESET(t_rxtcur, value, t_rttmin, TCPTV_REXMTMAX): only the
            # initial t_rxtcur (rexmit_initial) goes without the slop.
            rto = min(max(rto + self.slop, self.min_rto), self.max_rto)
        return rto

    def on_timeout(self) -> None:
        """The retransmission timer expired: back the timer off (RFC 6298 section 5.5)."""
        self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0
