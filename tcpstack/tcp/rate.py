"""Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation), as Linux tcp_rate.c.

Each transmission snapshots the connection's delivery state into its :class:`SentSegment`
(``delivered``, ``delivered_time``, ``first_tx_time``, ``app_limited``). When a segment is
delivered (SACKed or cumulatively acknowledged), the snapshot of the most recently *sent* of the
segments delivered by that ACK gives the start of the sample; the ACK gives its end. The interval
is the longer of the send phase (between the transmission of the first and the last segment the
sample covers) and the ACK phase (between their delivery), so neither ACK compression nor a
burst of sends can make the rate exceed what the path delivered.

Units: bytes of sequence space (a SYN or FIN counts as one byte, as Linux counts them as one
packet) and seconds.

Per ACK the engine calls :meth:`RateSampler.on_acked` for every newly delivered segment, then
:meth:`RateSampler.sample` once. :meth:`on_acked` is idempotent per transmission, so a segment
that was SACKed earlier and is now cumulatively acknowledged is not counted twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from tcpstack.tcp.fastinit import fast_constructor

if TYPE_CHECKING:
    from tcpstack.tcp.scoreboard import SentSegment

__all__ = ["RateSample", "RateSampler"]


@attrs.frozen(slots=True)
class RateSample:
    """One delivery-rate sample, produced per ACK (Linux ``struct rate_sample``).

    ``interval`` is ``None`` when the ACK gives no valid sample (nothing delivered, a SACK
    reneging, or an interval shorter than the minimum RTT, which can only come from ACK
    compression or a bad clock); ``delivered`` and ``delivery_rate`` are then 0.
    ``acked_sacked`` and ``losses`` are valid whatever the interval (BBR uses them).
    """

    delivered: int
    interval: float | None
    delivery_rate: float
    prior_delivered: int
    send_interval: float | None
    ack_interval: float | None
    acked_sacked: int
    losses: int
    is_app_limited: bool
    is_retrans: bool
    rtt: float | None

    @property
    def valid(self) -> bool:
        return self.interval is not None


_new_rate_sample = fast_constructor(RateSample)  # one per ACK: no attrs setattr per field


class RateSampler:
    """The connection-wide delivery state and the per-ACK sample under construction."""

    __slots__ = (
        "delivered",
        "delivered_time",
        "first_tx_time",
        "app_limited",
        "rate_delivered",
        "rate_interval",
        "rate_app_limited",
        "last_sample",
        "_prior_delivered",
        "_prior_time",
        "_send_interval",
        "_sample_app_limited",
        "_sample_retrans",
        "_last_end_seq",
        "_acked_sacked",
    )

    def __init__(self) -> None:
        self.delivered = 0  # bytes delivered so far (SACKed or cumulatively acked)
        self.delivered_time = 0.0  # when ``delivered`` last grew
        self.first_tx_time = 0.0  # send time of the most recently delivered segment
        # The draft's C.app_limited: the ``delivered`` value until which samples are
        # app-limited; 0 when the connection is not app-limited. A new connection starts
        # marked, as Linux's tcp_init_sock sets app_limited = ~0U: what it sends before its
        # first ACK (the SYN) says nothing about the path's capacity. -1 is cleared by the
        # first rate sample, as ~0U is by Linux's wrapping after(delivered, app_limited).
        self.app_limited = -1
        # The sample reported as the connection's delivery rate (Linux rate_delivered,
        # rate_interval_us, rate_app_limited in tcp_info).
        self.rate_delivered = 0
        self.rate_interval = 0.0
        self.rate_app_limited = False
        self.last_sample: RateSample | None = None
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._prior_delivered: int | None = None
        self._prior_time = 0.0
        self._send_interval = 0.0
        self._sample_app_limited = False
        self._sample_retrans = False
        self._last_end_seq = 0
        self._acked_sacked = 0

    @property
    def delivery_rate(self) -> float:
        """Bytes per second of the retained sample (``tcpi_delivery_rate``), 0.0 before any."""
        if self.rate_interval <= 0.0:
            return 0.0
        return self.rate_delivered / self.rate_interval

    # -- transmit side ---------------------------------------------------------------------

    def on_sent(self, seg: SentSegment, now: float, *, packets_out: int) -> None:
        """Snapshot the delivery state into ``seg`` as it is (re)transmitted at ``now``.

        ``packets_out`` is the number of segments outstanding before this one was sent.
        """
        if packets_out == 0:
            # Nothing in flight: the sample clock restarts here, so an idle period is not
            # counted as part of the next interval (tcp_rate_skb_sent).
            self.first_tx_time = now
            self.delivered_time = now
        seg.first_tx_time = self.first_tx_time
        seg.delivered_time = self.delivered_time
        seg.delivered = self.delivered
        seg.app_limited = self.app_limited != 0
        seg.delivery_counted = False

    def on_app_limited(
        self,
        bytes_in_flight: int,
        *,
        unsent_bytes: int,
        mss: int,
        cwnd: int,
        lost_segments: int = 0,
        retrans_segments: int = 0,
    ) -> bool:
        """Mark the connection app-limited if the application, not the network, limits sending
        (tcp_rate_check_app_limited); return whether it did.

        Conditions: less than one MSS left to send, the congestion window (bytes) not full, and
        every segment marked lost already retransmitted.
        """
        if (
            unsent_bytes < mss
            and bytes_in_flight < cwnd
            and lost_segments <= retrans_segments
        ):
            self.mark_app_limited(bytes_in_flight)
            return True
        return False

    def mark_app_limited(self, bytes_in_flight: int) -> None:
        """Samples taken until what is now in flight is delivered are app-limited."""
        self.app_limited = (self.delivered + bytes_in_flight) or 1

    # -- ACK side --------------------------------------------------------------------------

    def on_acked(self, seg: SentSegment, now: float) -> None:
        """``seg`` was delivered by the ACK being processed (tcp_rate_skb_delivered)."""
        del now  # the ACK time enters in sample(); kept for a uniform engine call site
        if seg.delivery_counted:
            return
        seg.delivery_counted = True
        n = seg.end - seg.start
        self.delivered += n
        self._acked_sacked += n
        tx_time = seg.last_sent
        # The sample starts from the most recently sent of the delivered segments; ties (a
        # burst sent in one go) broken by sequence (tcp_skb_sent_after).
        if self._prior_delivered is None or tx_time > self.first_tx_time or (
            tx_time == self.first_tx_time and seg.end > self._last_end_seq
        ):
            self._prior_delivered = seg.delivered
            self._prior_time = seg.delivered_time
            self._sample_app_limited = seg.app_limited
            self._sample_retrans = seg.retransmits > 0
            self._last_end_seq = seg.end
            self.first_tx_time = tx_time
            self._send_interval = tx_time - seg.first_tx_time

    def sample(
        self,
        now: float,
        *,
        losses: int = 0,
        rtt: float | None = None,
        min_rtt: float | None = None,
        is_sack_reneg: bool = False,
    ) -> RateSample:
        """Close the sample of the ACK processed at ``now`` (tcp_rate_gen)."""
        acked_sacked = self._acked_sacked
        if self.app_limited and self.delivered > self.app_limited:
            self.app_limited = 0  # the app-limited bubble has been delivered
        if acked_sacked:
            self.delivered_time = now
        prior = self._prior_delivered
        prior_time = self._prior_time
        send_interval = self._send_interval
        is_app_limited = self._sample_app_limited
        is_retrans = self._sample_retrans
        self._reset_pending()

        if prior is None or is_sack_reneg:
            rs = _new_rate_sample(0, None, 0.0, 0, None, None, acked_sacked, losses, is_app_limited,
                            is_retrans, rtt)
            self.last_sample = rs
            return rs
        delivered = self.delivered - prior
        ack_interval = now - prior_time
        interval = max(send_interval, ack_interval)
        if interval <= 0.0 or (min_rtt is not None and interval < min_rtt):
            rs = _new_rate_sample(0, None, 0.0, prior, send_interval, ack_interval, acked_sacked,
                            losses, is_app_limited, is_retrans, rtt)
            self.last_sample = rs
            return rs
        rate = delivered / interval
        rs = _new_rate_sample(delivered, interval, rate, prior, send_interval, ack_interval,
                        acked_sacked, losses, is_app_limited, is_retrans, rtt)
        # Keep the sample unless it is app-limited and lower than the one retained: an
        # app-limited sample only says the path can do *at least* this much.
        if not is_app_limited or delivered * self.rate_interval >= self.rate_delivered * interval:
            self.rate_delivered = delivered
            self.rate_interval = interval
            self.rate_app_limited = is_app_limited
        self.last_sample = rs
        return rs
