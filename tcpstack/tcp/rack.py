"""RACK-TLP (RFC 8985): time-based loss detection and tail loss probes, as Linux runs them.

RACK ("recent acknowledgment") marks a segment lost when a segment sent after it has been
delivered and it has itself stayed unacknowledged for RACK.rtt plus a reordering window.
Linux's choices (net/ipv4/tcp_recovery.c), kept here:

* The reordering window is min_rtt/4 times a multiplier that grows with D-SACKs (RFC 8985 6.2
  step 4), capped at SRTT; it is 0 (DupThresh-like) while no reordering has been seen and we
  are already in recovery or have ``reordering`` SACKed segments (tcp_rack_reo_wnd).
* A segment still inside its window arms the reordering timer (plus TCP_TIMEOUT_MIN, capped
  by the RTO); with RACK on, the RFC 6675 IsLost rule is not used at all.
* A SACKed or ACKed retransmission whose RTT is below min_rtt may be the original's ACK and
  does not advance RACK (tcp_rack_advance).

TLP (the probe itself is sent by :mod:`tcpstack.tcp.sender`) sends one probe PTO = 2*SRTT after the last transmission (plus the delayed-ACK allowance,
TCP_RTO_MIN, when a single segment is out; plus TCP_TIMEOUT_MIN otherwise), never later than
the RTO would fire: new data if the window allows, else the last segment again. Its ACK tells
whether a tail segment was lost (RFC 8985 7.4), then cwnd is reduced once (Linux
tcp_process_tlp_ack).

Linux keeps RTO, PTO and the reordering timer in one slot (``icsk_pending``); so does the
sender's ``_set_xmit_timer``: arming one cancels the others.
"""

from __future__ import annotations

from tcpstack.tcp.events import (
    LossDetected,
    RecoveryEntered,
    RecoveryExited,
)
from tcpstack.tcp.scoreboard import AckResult
from tcpstack.tcp.sender import TCP_TIMEOUT_MIN, SenderMixin
from tcpstack.tcp.state import CA_RECOVERY
from tcpstack.tcp.timers import TK_REO_TIMEOUT

__all__ = ["RackMixin", "REO_WND_PERSIST", "MAX_REO_WND_STEPS"]

REO_WND_PERSIST = 16  # Linux TCP_RACK_RECOVERY_THRESH: recoveries a grown window is kept for
MAX_REO_WND_STEPS = 255


class RackMixin(SenderMixin):
    """RACK loss detection and TLP for :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    # -- RACK -----------------------------------------------------------------------------

    def _rack_update(self, res: AckResult, now: float) -> bool:
        """RFC 8985 6.2 steps 1-2 from one ACK's newly delivered segments; True if RACK
        advanced (Linux rack.advanced), i.e. loss detection has something new to go on."""
        best = None
        min_rtt = self.rtt.min_rtt or 0.0
        for group in (res.newly_acked, res.newly_sacked):
            for r in group:
                if r.syn or (r.sacked and group is res.newly_acked):
                    continue  # a SACKed segment advanced RACK when it was SACKed
                t = r.last_sent
                if r.retransmits and now - t < min_rtt:
                    continue  # likely the original's ACK: ambiguous (tcp_rack_advance)
                if best is None or t > best[0] or (t == best[0] and r.end > best[1]):
                    best = (t, r.end)
        if best is None:
            return False
        t, end = best
        self.rack_rtt = now - t
        xmit = self.rack_xmit_ts
        if xmit is None or t > xmit or (t == xmit and end > self.rack_end_seq):
            self.rack_xmit_ts = t
            self.rack_end_seq = end
        return True

    def _rack_reo_wnd(self) -> float:
        """Linux tcp_rack_reo_wnd (RFC 8985 6.2 step 4)."""
        if not self.reord_seen:
            if self.ca_state >= CA_RECOVERY:
                return 0.0
            if self.sb.sacked_segments >= self.reordering:
                return 0.0
        min_rtt = self.rtt.min_rtt or 0.0
        srtt = self.rtt.srtt or 0.0
        return min(min_rtt / 4 * self.rack_reo_wnd_steps, srtt)

    def _rack_detect_loss(self, now: float) -> tuple[int, float]:
        """RFC 8985 RACK_detect_loss over the scoreboard; (newly lost, wait for the rest)."""
        if self.rack_xmit_ts is None:
            return 0, 0.0
        return self.sb.rack_detect_loss(
            self.rack_xmit_ts, self.rack_end_seq, now, self.rack_rtt + self._rack_reo_wnd()
        )

    def _rack_mark_lost(self, now: float) -> tuple[int, bool]:
        """Linux tcp_rack_mark_lost: detect, and arm the reordering timer for segments still
        inside their window. Returns (newly lost, whether the timer was armed)."""
        lost, wait = self._rack_detect_loss(now)
        if wait > 0:
            self._arm_reo_timer(now, wait)
        return lost, wait > 0

    def _arm_reo_timer(self, now: float, wait: float) -> None:
        self._set_xmit_timer(TK_REO_TIMEOUT, now + min(wait + TCP_TIMEOUT_MIN, self.rtt.rto))

    def _rack_dsack(self) -> None:
        """RFC 8985 6.2 step 4: a D-SACK widens the reordering window, once per round trip."""
        if self.rack_dsack_round is not None and self.snd_una >= self.rack_dsack_round:
            self.rack_dsack_round = None
        if self.rack_dsack_round is None:
            self.rack_dsack_round = self.snd_nxt
            self.rack_reo_wnd_steps = min(self.rack_reo_wnd_steps + 1, MAX_REO_WND_STEPS)
            self.rack_reo_wnd_persist = REO_WND_PERSIST

    def _rack_recovery_done(self) -> None:
        """After each recovery the widened window decays back (RFC 8985 6.2 step 4)."""
        if self.rack_reo_wnd_persist > 0:
            self.rack_reo_wnd_persist -= 1
        if self.rack_reo_wnd_persist == 0:
            self.rack_reo_wnd_steps = 1

    def _process_tlp_ack(self, ack: int, acked: int, res: AckResult, now: float) -> None:
        """RFC 8985 7.4 / Linux tcp_process_tlp_ack: did the probe repair a tail loss?"""
        high = self.tlp_high_seq
        if high is None or ack < high:
            return
        if not self.tlp_retrans:
            self.tlp_high_seq = None  # a probe of new data was ACKed: nothing to learn
        elif res.dsack and res.dsack_range is not None and res.dsack_range[1] <= high:
            self.tlp_high_seq = None  # the original and the probe both arrived: no loss
        elif ack > high:
            # Only the probe arrived: a segment was lost and the probe repaired it. Reduce
            # cwnd once, as for ECN (tcp_init_cwnd_reduction + tcp_end_cwnd_reduction).
            self.tlp_high_seq = None
            cc = self.cc
            cc.on_congestion_event(self._in_flight(), now)
            self._event(RecoveryEntered(now, self.conn_id, cc.cwnd, cc.ssthresh, "tlp"))
            cc.cwnd = max(min(cc.cwnd, cc.ssthresh), self.mss_cache)
            cc.on_recovery_exit(now)
            self._event(LossDetected(now, self.conn_id, 1, False))
            self._event(RecoveryExited(now, self.conn_id, cc.cwnd, cc.ssthresh))
        elif not acked and not res.sacked_bytes:
            self.tlp_high_seq = None  # a pure duplicate ACK: both arrived
