"""CUBIC (RFC 9438) with HyStart++ (RFC 9406) for the initial slow start.

Window arithmetic follows the RFC in segments (floats); the engine-facing ``cwnd`` and
``ssthresh`` stay in bytes. Fractions of a byte are carried between ACKs so that many small
increments add up exactly.

Rounds for HyStart++. RFC 9406 delimits a round with ``windowEnd = SND.NXT``: the round ends when
everything in flight at its start is acknowledged. This interface has no sequence numbers, so a
round is counted in bytes instead: at the ACK that opens a round, the bytes still in flight are
exactly those up to SND.NXT, so the round is over when that many more bytes have been
acknowledged (cumulatively or by SACK), and the next one opens with the first ACK beyond it (as
Linux's ``after(snd_una, end_seq)``). Retransmissions do not distort the count, as acknowledged
bytes are counted once. This needs ``bytes_in_flight`` after the ACK and before any data the ACK
releases, which is what the engine passes.
"""

from __future__ import annotations

import enum
import math
from typing import ClassVar

from tcpstack.tcp.congestion import (
    ABC_LIMIT_SEGMENTS,
    TCP_INFINITE_SSTHRESH,
    CongestionControl,
    _check_size,
    _check_time,
    _register_builtin,
)

__all__ = [
    "ALPHA_CUBIC",
    "BETA_CUBIC",
    "C_CUBIC",
    "Cubic",
    "HyStartPhase",
    "HyStartPlusPlus",
    "cubic_k",
    "w_cubic",
]

C_CUBIC = 0.4  # RFC 9438 section 4.2, segments / s^3
BETA_CUBIC = 0.7  # RFC 9438 section 4.6, multiplicative decrease factor
# RFC 9438 section 4.3: the AIMD slope that gives Reno's average rate with beta_cubic.
ALPHA_CUBIC = 3 * (1 - BETA_CUBIC) / (1 + BETA_CUBIC)


def cubic_k(w_max: float, cwnd_epoch: float, c: float = C_CUBIC) -> float:
    """RFC 9438 eq. 2: seconds until W_cubic climbs from ``cwnd_epoch`` back to ``w_max``
    (segments). Zero when the epoch starts at or above W_max."""
    return math.cbrt(max(w_max - cwnd_epoch, 0.0) / c)


def w_cubic(t: float, w_max: float, k: float, c: float = C_CUBIC) -> float:
    """RFC 9438 eq. 1: W_cubic(t) = C*(t-K)^3 + W_max, in segments, ``t`` seconds into the
    epoch."""
    return c * (t - k) ** 3 + w_max


class HyStartPhase(enum.Enum):
    SLOW_START = "slow_start"
    CSS = "css"  # Conservative Slow Start: RTT rose, growth slowed, maybe spuriously
    DONE = "done"  # slow start left (CSS rounds over, loss, or timeout); standard rules apply


# Enum members as module constants (CPython 3.11's Enum class attribute lookup is slow; the
# phase is tested on every ACK in slow start).
_HS_SLOW_START = HyStartPhase.SLOW_START
_HS_CSS = HyStartPhase.CSS
_HS_DONE = HyStartPhase.DONE


class HyStartPlusPlus:
    """RFC 9406 section 4.2 state machine, fed one ACK at a time by :class:`Cubic`.

    It only decides; the controller applies the growth (divided by ``CSS_GROWTH_DIVISOR`` in
    CSS) and sets ssthresh when :meth:`on_ack` reports the end of slow start.
    """

    # RFC 9406 section 4.3 constants.
    MIN_RTT_THRESH: ClassVar[float] = 0.004
    MAX_RTT_THRESH: ClassVar[float] = 0.016
    MIN_RTT_DIVISOR: ClassVar[int] = 8
    N_RTT_SAMPLE: ClassVar[int] = 8
    CSS_GROWTH_DIVISOR: ClassVar[int] = 4
    CSS_ROUNDS: ClassVar[int] = 5

    __slots__ = (
        "phase", "rounds", "css_rounds", "last_round_min_rtt", "current_round_min_rtt",
        "rtt_sample_count", "css_baseline_min_rtt", "_delivered", "_window_end",
    )

    def __init__(self) -> None:
        self.phase = _HS_SLOW_START
        self.rounds = 0
        self.css_rounds = 0
        self.last_round_min_rtt = math.inf
        self.current_round_min_rtt = math.inf
        self.rtt_sample_count = 0
        self.css_baseline_min_rtt = math.inf
        self._delivered = 0
        self._window_end: int | None = None

    def on_ack(self, acked_bytes: int, bytes_in_flight: int, rtt: float | None) -> bool:
        """Account one ACK; ``True`` when slow start must end now (CSS_ROUNDS completed)."""
        if self.phase is _HS_DONE:
            return False
        self._delivered += acked_bytes
        # A round ends with the first ACK beyond windowEnd (as Linux's after(snd_una, end_seq)).
        if self._window_end is None or self._delivered > self._window_end:
            if self._window_end is not None:
                self.rounds += 1
                if self.phase is _HS_CSS:
                    self.css_rounds += 1
                    if self.css_rounds >= self.CSS_ROUNDS:
                        self.phase = _HS_DONE
                        return True
            self.last_round_min_rtt = self.current_round_min_rtt
            self.current_round_min_rtt = math.inf
            self.rtt_sample_count = 0
            self._window_end = self._delivered + bytes_in_flight
        if rtt is not None:
            self.current_round_min_rtt = min(self.current_round_min_rtt, rtt)
            self.rtt_sample_count += 1
        if self.rtt_sample_count < self.N_RTT_SAMPLE:
            return False
        if self.phase is _HS_SLOW_START:
            if math.isinf(self.current_round_min_rtt) or math.isinf(self.last_round_min_rtt):
                return False
            rtt_thresh = max(
                self.MIN_RTT_THRESH,
                min(self.last_round_min_rtt / self.MIN_RTT_DIVISOR, self.MAX_RTT_THRESH),
            )
            if self.current_round_min_rtt >= self.last_round_min_rtt + rtt_thresh:
                self.css_baseline_min_rtt = self.current_round_min_rtt
                self.phase = _HS_CSS
                self.css_rounds = 0
        elif self.current_round_min_rtt < self.css_baseline_min_rtt:
            # The RTT increase was spurious: back to slow start (RFC 9406 section 4.2).
            self.css_baseline_min_rtt = math.inf
            self.phase = _HS_SLOW_START
        return False

    def stop(self) -> None:
        """Loss, ECN or timeout ended the initial slow start; HyStart++ is not used again."""
        self.phase = _HS_DONE


class Cubic(CongestionControl):
    """RFC 9438 CUBIC. ``hystart`` enables HyStart++ for the initial slow start."""

    name: ClassVar[str] = "cubic"

    __slots__ = (
        "c", "beta", "alpha", "fast_convergence", "hystart", "w_max", "k", "epoch_start",
        "cwnd_epoch", "w_est", "cwnd_prior", "srtt", "region", "_carry", "_last_send",
        "_app_limited_since", "_undo_state",
    )

    def __init__(
        self,
        mss: int,
        initial_window: int,
        *,
        hystart: bool = True,
        fast_convergence: bool = True,
        c: float = C_CUBIC,
        beta: float = BETA_CUBIC,
    ) -> None:
        super().__init__(mss, initial_window)
        if c != C_CUBIC or beta != BETA_CUBIC:  # the RFC's constants need no check
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"CUBIC C must be > 0, got {c!r}")
            if not 0 < beta < 1:
                raise ValueError(f"CUBIC beta must be in (0, 1), got {beta!r}")
            self.alpha = 3 * (1 - beta) / (1 + beta)
        else:
            self.alpha = ALPHA_CUBIC
        self.c = c
        self.beta = beta
        self.fast_convergence = fast_convergence
        self.hystart = HyStartPlusPlus() if hystart else None
        # RFC 9438 state, in segments and seconds. w_max None: no congestion event yet (or a
        # timeout erased it), so the next epoch starts with K = 0 (sections 4.8 and 4.10).
        self.w_max: float | None = None
        self.k = 0.0
        self.epoch_start: float | None = None
        self.cwnd_epoch = 0.0
        self.w_est = 0.0
        self.cwnd_prior = 0.0
        self.srtt: float | None = None  # smoothed RTT for the t + RTT look-ahead (section 4.2)
        self.region = "slow_start"
        self._carry = 0.0  # fractional bytes of cwnd growth not yet applied
        self._last_send: float | None = None
        self._app_limited_since: float | None = None
        self._undo_state: tuple[float | None, float, float | None, float, float, float] | None = (
            None
        )

    # -- growth ----------------------------------------------------------------------------

    def on_ack(
        self,
        acked_bytes: int,
        bytes_in_flight: int,
        now: float,
        *,
        rtt: float | None,
        cwnd_limited: bool,
    ) -> None:
        self._note_progress(acked_bytes, bytes_in_flight, now)
        if rtt is not None:
            if not (math.isfinite(rtt) and rtt >= 0):
                raise ValueError(f"rtt must be a finite number of seconds >= 0, got {rtt!r}")
            self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8
        if self.in_slow_start:
            acked_bytes = self._slow_start_ack(acked_bytes, bytes_in_flight, rtt, cwnd_limited)
            if acked_bytes == 0:
                return
        if not cwnd_limited:
            # RFC 9438 section 5.8: t must not include time the flow was application-limited.
            if self.epoch_start is not None and self._app_limited_since is None:
                self._app_limited_since = now
            return
        if self._app_limited_since is not None:
            if self.epoch_start is not None:
                self.epoch_start = min(self.epoch_start + now - self._app_limited_since, now)
            self._app_limited_since = None
        if acked_bytes:
            self._congestion_avoidance(acked_bytes, now)

    def _slow_start_ack(
        self, acked_bytes: int, bytes_in_flight: int, rtt: float | None, cwnd_limited: bool
    ) -> int:
        """One ACK in slow start; returns bytes left for congestion avoidance."""
        hystart = self.hystart
        if hystart is not None and self.ssthresh == TCP_INFINITE_SSTHRESH:
            if hystart.on_ack(acked_bytes, bytes_in_flight, rtt):
                # RFC 9406: CSS_ROUNDS done, enter congestion avoidance at the current window;
                # RFC 9438 section 4.10: no W_max yet, so the first epoch uses K = 0.
                self.ssthresh = self.cwnd
                self.cwnd_prior = self.cwnd / self.mss
                self.w_max = None
                self.epoch_start = None
                return 0
            if hystart.phase is _HS_CSS and cwnd_limited:
                self.region = "css"
                self._grow(
                    min(acked_bytes, ABC_LIMIT_SEGMENTS * self.mss)
                    / HyStartPlusPlus.CSS_GROWTH_DIVISOR
                )
                return 0
        if not cwnd_limited:
            return 0
        self.region = "slow_start"
        return self._slow_start(acked_bytes)

    def _congestion_avoidance(self, acked_bytes: int, now: float) -> None:
        mss = self.mss
        cwnd_seg = self.cwnd / mss
        if self.epoch_start is None:
            self._start_epoch(now, cwnd_seg)
            assert self.epoch_start is not None
        t = now - self.epoch_start
        w_max = self.w_max if self.w_max is not None else self.cwnd_epoch
        segments_acked = acked_bytes / mss

        # RFC 9438 section 4.3: Reno-friendly estimate; alpha becomes 1 once W_est has reached
        # the window of the last congestion event, so CUBIC is never slower than Reno.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else self.alpha
        self.w_est += alpha * segments_acked / cwnd_seg

        if w_cubic(t, w_max, self.k, self.c) < self.w_est:
            self.region = "reno"
            new_seg = max(cwnd_seg, self.w_est)
        else:
            # Sections 4.4/4.5: aim at where the curve will be one RTT from now, bounded so
            # one RTT can grow cwnd at most by half (and never shrink it).
            target = w_cubic(t + (self.srtt or 0.0), w_max, self.k, self.c)
            target = min(max(target, cwnd_seg), 1.5 * cwnd_seg)
            self.region = "concave" if cwnd_seg < w_max else "convex"
            new_seg = cwnd_seg + (target - cwnd_seg) / cwnd_seg * segments_acked
        self._grow((new_seg - cwnd_seg) * mss)

    def _start_epoch(self, now: float, cwnd_seg: float) -> None:
        self.epoch_start = now
        self.cwnd_epoch = cwnd_seg
        self.w_est = cwnd_seg
        self._app_limited_since = None
        if self.w_max is None or self.w_max <= cwnd_seg:
            # No congestion event to return to (HyStart++ exit, after an RTO, or already above
            # the old maximum): start on the plateau and probe convexly (sections 4.8, 4.10).
            self.w_max = cwnd_seg
            self.k = 0.0
        else:
            self.k = cubic_k(self.w_max, cwnd_seg, self.c)

    def _grow(self, increase_bytes: float) -> None:
        total = self._carry + increase_bytes
        whole = int(total)
        self._carry = total - whole
        self.cwnd = min(self.cwnd + whole, TCP_INFINITE_SSTHRESH)

    def on_packet_sent(self, sent_bytes: int, bytes_in_flight: int, now: float) -> None:
        _check_size("sent_bytes", sent_bytes, minimum=0)
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        nothing_was_in_flight = bytes_in_flight <= sent_bytes
        if (
            nothing_was_in_flight
            and self.epoch_start is not None
            and self._last_send is not None
            and self._app_limited_since is None
        ):
            # Restart after idle (Linux CA_EVENT_TX_START): the idle time is not part of t,
            # or the window would leap up the curve on the first ACKs (RFC 9438 section 5.8).
            idle = now - self._last_send
            if idle > 0:
                self.epoch_start = min(self.epoch_start + idle, now)
        self._last_send = now

    # -- reductions --------------------------------------------------------------------------

    def _save_undo(self) -> None:
        self._undo_state = (
            self.w_max,
            self.k,
            self.epoch_start,
            self.cwnd_epoch,
            self.w_est,
            self.cwnd_prior,
        )

    def _reduce(self) -> None:
        """RFC 9438 sections 4.6/4.7: remember W_max (lowered by fast convergence when this
        event came below the previous one) and set ssthresh to beta * cwnd.

        The RFC allows cwnd instead of FlightSize here provided cwnd cannot grow while the flow
        is not cwnd-limited, which :meth:`on_ack` enforces (as Linux does)."""
        self._save_undo()
        cwnd_seg = self.cwnd / self.mss
        if self.fast_convergence and self.w_max is not None and cwnd_seg < self.w_max:
            self.w_max = cwnd_seg * (1 + self.beta) / 2
        else:
            self.w_max = cwnd_seg
        self.cwnd_prior = cwnd_seg
        self.ssthresh = max(int(self.cwnd * self.beta), 2 * self.mss)
        self._end_epoch()
        if self.hystart is not None:
            self.hystart.stop()

    def _end_epoch(self) -> None:
        self.epoch_start = None
        self._app_limited_since = None
        self._carry = 0.0

    def on_congestion_event(self, bytes_in_flight: int, now: float) -> None:
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        self._reduce()
        self._bytes_acked = 0
        self._rto_without_progress = False
        self.region = "recovery"

    def on_recovery_exit(self, now: float) -> None:
        super().on_recovery_exit(now)
        self._end_epoch()  # the next ACK opens a new epoch from cwnd_epoch = cwnd

    def on_retransmission_timeout(self, bytes_in_flight: int, now: float) -> None:
        # RFC 9438 section 4.8: ssthresh as for any congestion event, cwnd to the loss window,
        # and the first epoch afterwards starts with K = 0 and W_max = its starting cwnd.
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        if not self._rto_without_progress:
            self._reduce()
        self._rto_without_progress = True
        self.w_max = None
        self._end_epoch()
        if self.hystart is not None:
            self.hystart.stop()
        self.cwnd = self.mss
        self._bytes_acked = 0
        self.region = "loss"

    def on_idle_restart(self, idle: float, rto: float, now: float) -> None:
        prior = self.cwnd
        super().on_idle_restart(idle, rto, now)
        if self.cwnd < prior:
            self._end_epoch()

    def undo(self, prior_cwnd: int, prior_ssthresh: int) -> None:
        """RFC 9438 section 4.9: a spurious congestion event restores W_max, K, the epoch and
        the Reno estimate saved when it was taken."""
        super().undo(prior_cwnd, prior_ssthresh)
        if self._undo_state is not None:
            (
                self.w_max,
                self.k,
                self.epoch_start,
                self.cwnd_epoch,
                self.w_est,
                self.cwnd_prior,
            ) = self._undo_state
            self._undo_state = None

    def set_mss(self, mss: int) -> None:
        super().set_mss(mss)
        self._carry = 0.0  # the RFC state is in segments and survives unchanged

    def state_dict(self) -> dict[str, float | int | str]:
        state = super().state_dict()
        state.update(
            w_max=self.w_max if self.w_max is not None else 0.0,
            k=self.k,
            epoch_start=self.epoch_start if self.epoch_start is not None else -1.0,
            cwnd_epoch=self.cwnd_epoch,
            w_est=self.w_est,
            cwnd_prior=self.cwnd_prior,
            region=self.region,
            hystart=self.hystart.phase.value if self.hystart is not None else "off",
        )
        if self.hystart is not None:
            state.update(
                hystart_rounds=self.hystart.rounds,
                hystart_css_rounds=self.hystart.css_rounds,
                hystart_last_round_min_rtt=self.hystart.last_round_min_rtt,
                hystart_current_round_min_rtt=self.hystart.current_round_min_rtt,
            )
        return state


_register_builtin(Cubic.name, Cubic, options=("hystart",))
