"""ACK processing on the sender: RTT, window, congestion control and loss recovery.

The recovery state machine follows Linux's tcp_fastretrans_alert in spirit with the RFCs' rules:

* SACK (RFC 6675): the scoreboard marks segments lost with IsLost; the first loss puts the
  connection in RECOVERY (``recover`` = snd_nxt, RFC 6582's recovery point).
* No SACK (RFC 5681 3.2 / RFC 6582 NewReno): DupThresh duplicate ACKs start recovery; each
  partial ACK retransmits the new head; duplicate ACKs stand in for SACKed segments in the
  flight count, which is also what lets the first two duplicate ACKs release new data (the
  effect of RFC 3042 limited transmit, as in Linux).
* RFC 6937 PRR sets cwnd on every ACK during RECOVERY and CWR (ECN), with Linux's
  slow-start reduction bound (PRR-SSRB) and its "force the first retransmission" rule.
* RTO (RFC 6298 5.4-5.7, RFC 5681 eq. 4): LOSS state, everything unSACKed is lost, slow start
  from one segment, retransmission in order.
"""

from __future__ import annotations

from tcpstack.tcp.events import (
    LossDetected,
    RecoveryEntered,
    RecoveryExited,
    RtoFired,
    UndoneReduction,
    UserTimeout,
    ZeroWindowCleared,
    ZeroWindowSeen,
)
from tcpstack.tcp.rack import REO_WND_PERSIST, RackMixin
from tcpstack.tcp.scoreboard import NO_RECORDS, SentSegment
from tcpstack.tcp.seq import unwrap
from tcpstack.tcp.state import CA_CWR, CA_DISORDER, CA_LOSS, CA_OPEN, CA_RECOVERY, CaState
from tcpstack.tcp.timers import TK_LOSS_PROBE, TK_PERSIST, TK_REO_TIMEOUT, TK_RETRANSMIT
from tcpstack.wire.segment import TcpFlags, TcpSegment

__all__ = ["RecoveryMixin"]

MASK = 0xFFFFFFFF
MAX_REORDERING = 300  # Linux net.ipv4.tcp_max_reordering
RENEGING_MIN_DELAY = 0.010  # s, Linux tcp_check_sack_reneging's msecs_to_jiffies(10) floor
_F_FIN, _F_SYN, _F_ECE = 0x01, 0x02, 0x40
# The ACK of a bare SYN or FIN takes _ack_syn_or_fin; off only in the test that checks it
# reaches the same state as the full path.
SYN_FIN_ACK_FAST_PATH = True


class RecoveryMixin(RackMixin):
    """Sender-side ACK processing of :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    def _sack_blocks_of(self, seg: TcpSegment, ack: int) -> list[tuple[int, int]]:
        blocks = []
        for left, right in seg.options.sack_blocks:
            lo = unwrap(left, ack)
            blocks.append((lo, lo + ((right - left) & MASK)))
        return blocks

    def _process_ack(self, seg: TcpSegment, flags: int, seq: int, ack: int, now: float) -> None:
        """An acceptable ACK (snd_una <= ack <= snd_nxt) arrived in a synchronized state.

        ``flags`` is ``seg.flags`` as a plain int.
        """
        sb = self.sb
        # What both fast paths below require: no ECN echo, no SACK information, and nothing of
        # a loss episode (recovery, duplicate ACKs, undo, a tail loss probe) to update.
        if (
            not flags & _F_ECE
            and self.ca_state == CA_OPEN
            and not self.dupacks
            and self.undo_marker is None
            and self.tlp_high_seq is None
            and not seg.options.sack_blocks
        ):
            if ack == self.snd_una and not sb:
                # Fast path (the spirit of Linux's header prediction): nothing outstanding and
                # nothing newly acknowledged, the ACK every data segment of a one-way transfer
                # carries to its receiver. Only the window and the (empty) rate sample can
                # change; the full path below would reach the same state through the scoreboard.
                self.last_ack_recv = now
                self.probes_out = 0
                self._update_window(seg, seq, ack, now, ack)
                self.rate.sample(now, rtt=None, min_rtt=self.rtt.min_rtt)
                return
            recs = sb._recs
            if (
                len(recs) == 1
                and SYN_FIN_ACK_FAST_PATH
                and sb._head == 0
                and sb._highest_sacked is None
            ):
                r = recs[0]
                if (
                    (r.syn or r.fin) and r.end == ack and r.end - r.start == 1
                    and r.start == self.snd_una and not r.retransmits
                    and not (r.sacked or r.lost or r.retrans_in_flight)
                ):
                    self._ack_syn_or_fin(seg, r, seq, ack, now)
                    return
        mss = self.mss_cache
        prior_una = self.snd_una
        prior_in_flight = self._in_flight()
        blocks = self._sack_blocks_of(seg, ack) if self.sack_ok and seg.options.sack_blocks else []
        self.last_ack_recv = now
        res = sb.on_ack(ack, blocks, now, mss, rate=self.rate)
        self.probes_out = 0  # the peer answers: RFC 1122 4.2.2.17, Linux tcp_ack
        delivered_segs = 0  # packets: a TSO record counts its pcount (Linux tp->delivered)
        for r in res.newly_sacked:
            delivered_segs += r.pcount
        for r in res.newly_acked:
            if not r.sacked:
                delivered_segs += r.pcount
        self.delivered_segs += delivered_segs
        if flags & _F_ECE and self.ecn_ok:
            self.delivered_ce += delivered_segs
        acked = ack - prior_una
        reneged = False
        if acked > 0:
            self.snd_una = ack
            self.bytes_acked += self.sndbuf.ack_to(ack)
            self.retransmits = 0
            first = sb.first()
            self.retrans_stamp = first.first_sent if first is not None else None
            # RFC 2018 section 8 (Linux FLAG_SACK_RENEGING): the cumulative ACK stopped at a
            # segment the peer had SACKed, so it has likely dropped its out-of-order queue.
            reneged = first is not None and first.sacked

        # RTT: the scoreboard's Karn-safe sample, else RFC 7323 RTTM from the echoed timestamp.
        rtt_sample = res.rtt_sample
        ts = seg.options.timestamps
        if rtt_sample is None and acked > 0 and self.ts_ok and ts is not None and ts.tsecr:
            rtt_sample = self._ts_age(ts.tsecr, now)
        if rtt_sample is not None and (acked > 0 or res.sacked_bytes):
            self.rtt.on_rtt_sample(max(rtt_sample, 1e-6), now)

        if res.dsack:
            self.dsack_dups += 1
            dsack = res.dsack_range
            if (
                self.undo_marker is not None and self.undo_retrans > 0 and dsack is not None
                and dsack[1] > self.undo_marker
            ):
                self.undo_retrans -= 1  # one retransmission of this episode was unnecessary
            if self.profile.rack_tlp:
                self._rack_dsack()
        rack = self.profile.rack_tlp and self.sack_ok
        rack_advanced = rack and bool(res.newly_acked or res.newly_sacked) and self._rack_update(
            res, now
        )
        if res.reordering > 0:
            self.reord_seen += 1
            degree = min(-(-res.reordering // mss), MAX_REORDERING)
            if degree > self.reordering:
                self.reordering = degree

        # Window (RFC 9293 3.10.7.4 SND.WL1/SND.WL2 rule).
        window_changed = self._update_window(seg, seq, ack, now, prior_una)

        is_dupack = (
            acked == 0
            and not seg.payload
            and not window_changed
            and not flags & (_F_SYN | _F_FIN)
            and bool(sb)
        )
        newly_lost = 0
        reo_armed = False
        if rack:
            if rack_advanced:
                newly_lost, reo_armed = self._rack_mark_lost(now)
        elif self.sack_ok and (res.sacked_bytes or acked) and self.ca_state != CA_LOSS:
            newly_lost = sb.update_lost(mss)
        if self.tlp_high_seq is not None:
            self._process_tlp_ack(ack, acked, res, now)
        self._ca_on_ack(
            seg, acked, res.delivered_bytes, is_dupack, newly_lost, prior_in_flight, rtt_sample,
            now,
        )
        self.rate.sample(now, losses=newly_lost, rtt=rtt_sample, min_rtt=self.rtt.min_rtt)

        if acked > 0:
            if self.sndbuf_auto and self._in_flight() < self.cc.cwnd:
                # Linux tcp_check_space -> tcp_new_space: the ACK freed buffer space and cwnd
                # is not full (tcp_should_expand_sndbuf), so let the buffer follow cwnd.
                self._sndbuf_expand()
            if not sb:
                for kind in (TK_RETRANSMIT, TK_LOSS_PROBE, TK_REO_TIMEOUT):
                    self.timers.cancel(kind)
                self.tlp_pending = False
                self.retrans_stamp = None
            elif reneged:
                self._arm_reneging_timer(now)
            elif not reo_armed and not self._schedule_loss_probe(now, advancing_rto=True):
                # Linux tcp_set_xmit_timer, unless RACK just armed its reordering timer.
                self._arm_rto(now)

    def _ack_syn_or_fin(
        self, seg: TcpSegment, r: SentSegment, seq: int, ack: int, now: float
    ) -> None:
        """What :meth:`_process_ack` does for an ACK of exactly our bare SYN or FIN, the only
        segment outstanding, sent once, without SACK or ECE, in the OPEN state (the spirit of
        Linux's header prediction; every handshake and every close comes here). The state
        reached is the full path's (tests/tcp/test_engine_costs.py compares them field by
        field): the record leaves the scoreboard, the RTT is sampled from it (Karn-safe: never
        retransmitted), delivery count and rate sample, RACK, the window (RFC 9293 3.10.7.4),
        congestion control and the timers as there; only the steps that cannot change anything
        here (SACK processing, loss marking, recovery) are skipped.
        """
        sb = self.sb
        rate = self.rate
        prior_una = self.snd_una
        self.last_ack_recv = now
        # Scoreboard.on_ack: the one record is cumulatively acknowledged.
        sb._recs = NO_RECORDS
        sb._head = 0
        sb._bytes_out -= 1
        sb._packets_out -= r.pcount
        sb._sack_cache = ()
        rate.on_acked(r, now)
        rtt_sample = now - r.last_sent
        self.probes_out = 0  # the peer answers: RFC 1122 4.2.2.17, Linux tcp_ack
        self.delivered_segs += r.pcount
        self.snd_una = ack
        self.bytes_acked += self.sndbuf.ack_to(ack)
        self.retransmits = 0
        self.retrans_stamp = None
        rtt = self.rtt
        rtt.on_rtt_sample(rtt_sample if rtt_sample > 1e-6 else 1e-6, now)
        if not r.syn and self.profile.rack_tlp and self.sack_ok:
            # RACK (RFC 8985 6.2): the FIN is the most recently sent delivered segment; loss
            # detection then finds an empty scoreboard.
            self.rack_rtt = rtt_sample
            xmit = self.rack_xmit_ts
            t = r.last_sent
            if xmit is None or t > xmit or (t == xmit and r.end > self.rack_end_seq):
                self.rack_xmit_ts = t
                self.rack_end_seq = r.end
        self._update_window(seg, seq, ack, now, prior_una)
        # _ca_on_ack in the OPEN state with one byte newly delivered and nothing lost.
        cc = self.cc
        cc.on_ack(1, 0, now, rtt=rtt_sample, cwnd_limited=self._is_cwnd_limited())
        rate.sample(now, losses=0, rtt=rtt_sample, min_rtt=rtt.min_rtt)
        if self.sndbuf_auto and cc.cwnd > 0:  # Linux tcp_check_space, as on the full path
            self._sndbuf_expand()
        timers = self.timers
        deadlines = timers._deadlines
        for kind in (TK_RETRANSMIT, TK_LOSS_PROBE, TK_REO_TIMEOUT):
            if deadlines[kind] is not None:
                timers.cancel(kind)
        self.tlp_pending = False

    def _arm_reneging_timer(self, now: float) -> None:
        """Linux tcp_check_sack_reneging: give the peer max(srtt/2, 10 ms) to ACK the SACKed
        data it seems to have discarded (a delayed ACK may still be on its way), then let the
        RTO forget the SACK marks and resend everything unacknowledged."""
        srtt = self.rtt.srtt
        delay = max(srtt / 2 if srtt is not None else 0.0, RENEGING_MIN_DELAY)
        when = now + delay
        ut = self.opts.user_timeout
        if ut is not None and self.retrans_stamp is not None:
            when = min(when, max(self.retrans_stamp + ut, now))
        self._set_xmit_timer(TK_RETRANSMIT, when)

    def _update_window(
        self, seg: TcpSegment, seq: int, ack: int, now: float, prior_una: int
    ) -> bool:
        # The window is relative to the ACK that carries it, so any ACK that advances snd_una
        # must update it, even from a segment with an old sequence number (else the right edge
        # would slide past what the peer offered). Otherwise RFC 9293's SND.WL1/WL2 rule, as
        # Linux tcp_may_update_window.
        wnd = seg.window << self.snd_wscale
        if not (
            ack > prior_una
            or self.snd_wl1 < seq
            or (self.snd_wl1 == seq and (wnd > self.snd_wnd or wnd == 0))
        ):
            return False
        changed = wnd != self.snd_wnd
        self.snd_wnd = wnd
        self.snd_wl1 = seq
        self.snd_wl2 = ack
        if wnd > self.max_window:
            self.max_window = wnd
        if wnd == 0:
            if not self.peer_zero_window:
                self.peer_zero_window = True
                self._event(ZeroWindowSeen(now, self.conn_id))
        elif self.peer_zero_window:
            self.peer_zero_window = False
            self._event(ZeroWindowCleared(now, self.conn_id))
        if wnd > 0 and self.timers.is_set(TK_PERSIST):
            self.timers.cancel(TK_PERSIST)
            self.persist_backoff = 0
            self.probes_out = 0
        return changed

    # -- congestion state machine -------------------------------------------------------

    def _ca_on_ack(
        self, seg: TcpSegment, acked: int, delivered: int, is_dupack: bool, newly_lost: int,
        prior_in_flight: int, rtt: float | None, now: float,
    ) -> None:
        sb = self.sb
        mss = self.mss_cache
        state = self.ca_state
        ack = self.snd_una

        if state == CA_LOSS:
            if ack >= self.recover and acked > 0:
                if not self.pmtu_loss:
                    self.total_rto_time += now - self.loss_rto_start
                self.pmtu_loss = False
                self.ca_state = CA_OPEN
                state = CA_OPEN
            elif acked > 0:
                self.cc.on_ack(delivered, self._in_flight(), now, rtt=rtt, cwnd_limited=True)
                return
            else:
                return

        if self.undo_marker is not None and self.undo_retrans == 0:
            # Every retransmission of the episode came back D-SACKed: it was reordering or
            # delay, not loss (RFC 3708; Linux tcp_try_undo_dsack, also after the recovery).
            self._undo_dsack(now)
            state = self.ca_state

        if self.ecn_ok and seg.flags & TcpFlags.ECE and state in (CA_OPEN, CA_DISORDER):
            # RFC 3168 6.1.2: react to an ECN echo once per window, like a loss but without
            # retransmitting (Linux tcp_enter_cwr: PRR reduction in the CWR state).
            self._start_reduction(prior_in_flight, now, CA_CWR, "ecn")
            self.cwr_pending = True
            state = CA_CWR

        if state in (CA_RECOVERY, CA_CWR):
            if ack >= self.recover and acked > 0 and (
                state == CA_CWR or ack > self.recover or self.sack_ok or not sb
            ):
                self._end_reduction(now)
                state = self.ca_state
            else:
                if state == CA_RECOVERY and not self.sack_ok:
                    if acked > 0:
                        # RFC 6582 partial ACK: the next hole is lost; dupacks consumed.
                        self.dupacks = max(self.dupacks - (acked + mss - 1) // mss, 0)
                    elif is_dupack:
                        self.dupacks += 1
                if state == CA_RECOVERY and newly_lost:
                    self._event(LossDetected(now, self.conn_id, newly_lost, newly_lost > 1))
                    self.lost_total += newly_lost
                self._prr(delivered, acked > 0, newly_lost)
                return

        # OPEN or DISORDER.
        if self.sack_ok:
            if is_dupack:
                self.dupacks += 1
            elif acked > 0:
                self.dupacks = 0
            if sb.lost_segments > 0:
                self.lost_total += newly_lost
                self._start_reduction(prior_in_flight, now, CA_RECOVERY, "sack")
                self._event(LossDetected(now, self.conn_id, max(newly_lost, 1), newly_lost > 1))
                self._prr(delivered, acked > 0, newly_lost)
                return
        else:
            if is_dupack:
                self.dupacks += 1
                if self.dupacks >= self.profile.dup_ack_threshold:
                    self.lost_total += 1
                    self._start_reduction(prior_in_flight, now, CA_RECOVERY, "dupacks")
                    self._event(LossDetected(now, self.conn_id, 1, False))
                    self._prr(max(delivered, mss), False, 1)
                    return
            elif acked > 0:
                self.dupacks = 0
        if acked > 0 and delivered > 0:
            self.cc.on_ack(
                delivered, self._in_flight(), now, rtt=rtt, cwnd_limited=self._is_cwnd_limited()
            )
        disorder = self.dupacks > 0 or (self.sack_ok and sb.sacked_segments > 0)
        self.ca_state = CA_DISORDER if disorder else CA_OPEN

    def _undo_dsack(self, now: float) -> None:
        cc = self.cc
        cc.undo(max(self.prior_cwnd, 1), max(self.prior_ssthresh, 1))
        self.undo_marker = None
        self.undos += 1
        self.rack_reo_wnd_persist = min(self.rack_reo_wnd_persist + 1, REO_WND_PERSIST)
        self._event(UndoneReduction(now, self.conn_id, cc.cwnd, cc.ssthresh, "dsack"))
        if self.ca_state == CA_RECOVERY:
            # Linux tcp_try_to_open: leave recovery; new losses start a new episode.
            self.ca_state = CA_DISORDER if self.sb.sacked_segments else CA_OPEN
            self.dupacks = 0
            self._event(RecoveryExited(now, self.conn_id, cc.cwnd, cc.ssthresh))

    def _on_reo_timeout(self, now: float) -> None:
        """Linux tcp_rack_reo_timeout: the reordering window ran out for some segments."""
        prior_in_flight = self._in_flight()
        lost, wait = self._rack_detect_loss(now)
        if lost:
            self.lost_total += lost
            self._event(LossDetected(now, self.conn_id, lost, lost > 1))
            if self.ca_state not in (CA_RECOVERY, CA_LOSS):
                self._start_reduction(prior_in_flight, now, CA_RECOVERY, "rack")
                self._prr(self.mss_cache, False, lost)
        if wait > 0:
            self._arm_reo_timer(now, wait)
        elif self.sb:
            self._arm_rto(now)

    def _is_cwnd_limited(self) -> bool:
        """Linux tcp_is_cwnd_limited: in slow start, cwnd below twice the largest flight of the
        window; otherwise whether sending was blocked by cwnd in this window (RFC 7661)."""
        cc = self.cc
        if cc.in_slow_start:
            return cc.cwnd < 2 * self.max_flight
        return self.cwnd_limited

    def _start_reduction(
        self, prior_in_flight: int, now: float, state: CaState, reason: str
    ) -> None:
        cc = self.cc
        self.prior_cwnd = cc.cwnd
        self.prior_ssthresh = cc.ssthresh
        # Linux tcp_init_undo for a recovery; a CWR (ECN) reduction is never undone.
        self.undo_marker = self.snd_una if state == CA_RECOVERY else None
        self.undo_retrans = self.sb.retrans_out or -1
        self.tlp_high_seq = None
        self.recover = self.snd_nxt
        cc.on_congestion_event(prior_in_flight, now)
        self.prr_delivered = 0
        self.prr_out = 0
        self.recover_fs = max(self.prior_cwnd, 1)
        self.ca_state = state
        self._event(RecoveryEntered(now, self.conn_id, cc.cwnd, cc.ssthresh, reason))

    def _end_reduction(self, now: float) -> None:
        cc = self.cc
        cc.on_recovery_exit(now)
        if self.ca_state == CA_RECOVERY and self.profile.rack_tlp:
            self._rack_recovery_done()
        self.ca_state = CA_OPEN
        self.dupacks = 0
        self._event(RecoveryExited(now, self.conn_id, cc.cwnd, cc.ssthresh))

    def _prr(self, delivered: int, una_advanced: bool, newly_lost: int) -> None:
        """RFC 6937 proportional rate reduction, as Linux tcp_cwnd_reduction (bytes)."""
        if delivered <= 0:
            return
        cc = self.cc
        mss = self.mss_cache
        self.prr_delivered += delivered
        pipe = self._in_flight()
        ssthresh = cc.ssthresh
        delta = ssthresh - pipe
        if delta < 0:
            # Proportional part: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            sndcnt = -(-(self.prr_delivered * ssthresh) // self.recover_fs) - self.prr_out
        else:
            # PRR-SSRB: catch up to ssthresh, at most one extra MSS per ACK that advances
            # snd_una without new loss.
            sndcnt = max(self.prr_delivered - self.prr_out, delivered)
            if una_advanced and not newly_lost:
                sndcnt += mss
            sndcnt = min(delta, sndcnt)
        # Linux: force the fast retransmission when entering recovery.
        sndcnt = max(sndcnt, 0 if self.prr_out else mss)
        cc.cwnd = max(pipe + sndcnt, mss)

    # -- retransmission timeout ---------------------------------------------------------

    def _on_rto(self, now: float) -> None:
        """RFC 6298 5.4-5.6 and RFC 5681 eq. 4 (the data-phase RTO; SYN timers are separate)."""
        sb = self.sb
        if not sb:
            return
        ut = self.opts.user_timeout
        if ut is not None and self.retrans_stamp is not None and now - self.retrans_stamp >= ut:
            self._event(UserTimeout(now, self.conn_id, ut))
            self._abort_timeout(now, "user timeout")
            return
        if self.retransmits >= self.profile.data_retries:
            self._abort_timeout(now, "connection timed out")
            return
        self.total_rto += 1
        self.retransmits += 1
        cc = self.cc
        if self.ca_state != CA_LOSS or self.pmtu_loss:
            self.pmtu_loss = False
            self.total_rto_recoveries += 1
            self.loss_rto_start = now
            self.prior_cwnd = cc.cwnd
            self.prior_ssthresh = cc.ssthresh
        before = sb.lost_segments
        cc.on_retransmission_timeout(self._in_flight(), now)
        head = sb.first()
        if head is not None and head.sacked:
            # Linux tcp_timeout_mark_lost: the receiver reneged on its SACKs (RFC 2018 section
            # 8 says a sender must not rely on them past an RTO); retransmit every byte.
            self.sack_reneging += 1
            sb.mark_all_lost(clear_sacked=True)
        else:
            sb.mark_all_lost()
        newly = sb.lost_segments - before
        if newly > 0:
            self.lost_total += newly
            self._event(LossDetected(now, self.conn_id, newly, newly > 1))
        self.ca_state = CA_LOSS
        self.recover = self.snd_nxt
        self.dupacks = 0
        self.undo_marker = None  # no undo of an RTO episode (F-RTO/Eifel are not implemented)
        self.tlp_high_seq = None
        self.tlp_pending = False
        self.rtt.on_timeout()
        self._event(RtoFired(now, self.conn_id, self.rtt.backoff, self.rtt.rto))
        self._arm_rto(now)
