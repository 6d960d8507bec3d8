"""The send half: retransmissions, new data under cwnd and the peer's window, Nagle, SWS, FIN,
zero-window probes and keep-alive probes.

Everything that leaves the connection in synchronized states goes through :meth:`_transmit`,
called from ``poll_transmit``. Order per call, as Linux's tcp_write_xmit and
tcp_xmit_retransmit_queue: lost segments first (RFC 6675 NextSeg rule 1), then new data (rule 2),
then, in SACK recovery with nothing new to send, rule 3 holes; finally a pure ACK if one is owed
and nothing carried it.
"""

from __future__ import annotations

from tcpstack.tcp.core import TCP_MSS_DEFAULT, TS_OPTION_LEN, ConnectionCore
from tcpstack.tcp.events import LossProbeSent, RetransmitKind, SegmentRetransmitted
from tcpstack.tcp.state import (
    CA_CWR,
    CA_LOSS,
    CA_OPEN,
    CA_RECOVERY,
    ST_CLOSE_WAIT,
    ST_CLOSING,
    ST_ESTABLISHED,
    ST_FIN_WAIT_1,
    ST_LAST_ACK,
)
from tcpstack.tcp.timers import TK_LOSS_PROBE, TK_PERSIST, TK_REO_TIMEOUT, TK_RETRANSMIT, TimerKind
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment

__all__ = ["SenderMixin"]

# Plain ints: flags are combined on ints (IntFlag's operators are Python-level calls) and
# _emit interns the TcpFlags value.
_ACK = int(TcpFlags.ACK)
_PSH = int(TcpFlags.PSH)
_FIN = int(TcpFlags.FIN)
_CWR = int(TcpFlags.CWR)
MASK = 0xFFFFFFFF
IP_MAX_PACKET = 0xFFFF  # the IPv4 total length field bounds a TSO super-segment
TCP_MIN_TSO_SEGS = 2  # Linux sysctl_tcp_min_tso_segs: a super-segment worth building

TCP_TIMEOUT_MIN = 0.002  # Linux TCP_TIMEOUT_MIN: 2 jiffies
TCP_TIMEOUT_INIT = 1.0  # PTO when there is no RTT sample yet (RFC 8985 7.2)
_XMIT_TIMERS = (TK_RETRANSMIT, TK_LOSS_PROBE, TK_REO_TIMEOUT)

# States in which our side may still send data or retransmit (RFC 9293 3.10.4 / 3.10.7).
SENDING_STATES = frozenset({
    ST_ESTABLISHED, ST_CLOSE_WAIT, ST_FIN_WAIT_1, ST_CLOSING,
    ST_LAST_ACK,
})


class SenderMixin(ConnectionCore):
    """Output path of :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    # -- flight accounting ------------------------------------------------------------

    def _in_flight(self) -> int:
        """Bytes believed in the network (Linux tcp_packets_in_flight, RFC 6675 pipe).

        Without SACK, duplicate ACKs stand in for SACKed segments and the head is counted lost
        during recovery (Linux tcp_add_reno_sack / tcp_mark_head_lost).
        """
        sb = self.sb
        # Scoreboard.bytes_in_flight, inlined (several calls per ACK and per poll).
        flight = sb._bytes_out - sb._sacked_bytes - sb._lost_bytes + sb._retrans_bytes
        if self.sack_ok:
            return flight
        if self.dupacks and flight:
            segs = sb.packets_out
            flight -= min(self.dupacks, max(segs - 1, 0)) * self.mss_cache
        if self.ca_state == CA_RECOVERY:
            head = sb.first()
            if head is not None and not head.lost:
                flight -= head.end - head.start
        return max(flight, 0)

    # -- segmentation offload ---------------------------------------------------------

    def _size_goal(self, mss: int) -> int:
        """Payload bytes one segment may carry: ``mss``, or with TSO a multiple of it that the
        link cuts into ``mss`` pieces (Linux tcp_xmit_size_goal / tcp_bound_to_half_wnd).

        TSO is used only while the path MTU is the interface's (the stack grants
        ``gso_max_size`` only when the connection's MTU is the link's; no ICMP has lowered it
        since) and the send MSS is the one that MTU gives (not clamped by the peer's MSS option
        or the user): then every piece is exactly what a device that knows only its MTU cuts
        (virtio-net gso_size = MTU - headers), never more than the peer's MSS.
        """
        gso_max = self.gso_max_size
        opts = self.opts
        if gso_max <= 0 or not opts.tso or self.pmtu != opts.mtu:
            return mss
        ts_len = TS_OPTION_LEN if self.ts_ok else 0
        if self.mss_cache != self.pmtu - 40 - ts_len:
            return mss
        # IPv4 + TCP headers with the options data segments carry now (timestamps, and SACK
        # blocks, which _current_mss took off mss_cache).
        headers = 40 + ts_len + (self.mss_cache - mss)
        goal = min(gso_max, IP_MAX_PACKET) - headers
        # tcp_bound_to_half_wnd: never more than half the largest window the peer offered.
        half = self.max_window >> 1 if self.max_window > TCP_MSS_DEFAULT else self.max_window
        if half and goal > half:
            goal = half
        segs = goal // mss
        return segs * mss if segs >= TCP_MIN_TSO_SEGS else mss

    # -- the transmit loop ------------------------------------------------------------

    def _transmit(self, now: float, out: list[TcpSegment]) -> None:
        if self.state not in SENDING_STATES:
            return
        sb = self.sb
        cc = self.cc
        if self.idle_check:
            # RFC 5681 4.1: restart from the initial window after an idle period. Linux
            # judges it when the application queues data with nothing in flight
            # (tcp_slow_start_after_idle_check from tcp_skb_entail), not while queued data
            # waits for the window: send() sets idle_check, the first transmit attempt decides.
            self.idle_check = False
            if (
                self.profile.cwnd_validation
                and not sb
                and self.last_data_sent is not None
                and now - self.last_data_sent > self.rtt.rto
            ):
                cc.on_idle_restart(now - self.last_data_sent, self.rtt.rto, now)
        in_flight = self._in_flight()
        ca_state = self.ca_state
        if (
            ca_state < CA_RECOVERY
            and not self.tlp_pending
            and self.sndbuf.end <= self.snd_nxt
            and (not self.shut_wr or self.fin_seq is not None)
        ):
            # Nothing to retransmit, no new data or FIN, no probe due (every ACK and most polls
            # of a handshake or an idle connection): only the bookkeeping at the end of the loop
            # applies, with nothing blocked and nothing sent.
            self._transmit_done(now, in_flight, cwnd_blocked=False, rwnd_blocked=False)
            return
        mss = self._current_mss()

        # 1. Retransmissions: lost segments (SACK recovery, RTO recovery) or the NewReno head.
        if ca_state >= CA_RECOVERY:
            in_flight = self._retransmit_lost(now, out, in_flight)

        # 2. New data and FIN. A tail loss probe may send one new segment whatever cwnd and
        # Nagle say (Linux tcp_send_loss_probe: tcp_write_xmit with TCP_NAGLE_OFF, push_one).
        sndbuf = self.sndbuf
        wnd_end = self.snd_una + self.snd_wnd
        rwnd_blocked = False
        cwnd_blocked = False
        probe = self.tlp_pending
        sent_new = False
        # Loop invariants hoisted: this loop runs once per segment sent.
        size_goal = self._size_goal(mss)
        half_max_window = self.max_window >> 1
        nodelay = self.opts.nodelay
        data_tos = self._data_tos()
        in_recovery = self.ca_state == CA_RECOVERY
        rate = self.rate
        emit = self._emit
        on_sent = sb.on_sent
        xmit_timer_checked = False
        # Without SACK blocks every segment of this loop carries the same options (timestamps
        # of ``now``): build them once. Blocks are rebuilt per segment, since a D-SACK block
        # goes out only once.
        seg_options: TcpOptions | None = None
        while True:
            data_end = sndbuf.end
            snd_nxt = self.snd_nxt
            avail = data_end - snd_nxt
            fin_ready = self.shut_wr and self.fin_seq is None
            if avail <= 0 and not fin_ready:
                break
            # Linux tcp_cwnd_test: "don't be strict about the congestion window for the final
            # FIN": a last single segment carrying the FIN goes out even with cwnd full.
            if in_flight >= cc.cwnd and not (fin_ready and avail <= mss) and not probe:
                cwnd_blocked = True
                break
            room = wnd_end - snd_nxt
            n = min(mss, avail, room) if avail > 0 else 0
            if n == mss and size_goal > mss and not probe:
                # TSO (Linux tcp_write_xmit / tcp_mss_split_point): as many whole MSS pieces
                # as cwnd (in packets, as tcp_cwnd_test), the window and the size goal allow,
                # so congestion control sees the same packets it would see one by one.
                quota = -(-(cc.cwnd - in_flight) // mss) * mss if in_flight < cc.cwnd else mss
                n = min(size_goal, quota, avail, room)
                partial = n % mss
                if partial and (
                    n < avail  # window-limited: the fragment is judged by SWS next round
                    or (
                        not fin_ready and not nodelay
                        and self.snd_sml > self.snd_una and self.snd_sml <= snd_nxt
                    )  # the data's small tail: Nagle (Minshall) would hold it (tcp_nagle_check)
                ):
                    n -= partial
            if avail > 0:
                if n <= 0:
                    rwnd_blocked = True
                    break
                if (
                    n < mss and n < avail and n < half_max_window
                    and not self.sws_override
                ):
                    # RFC 1122 4.2.3.4 sender SWS avoidance: a window-limited fragment is sent
                    # only if it is at least half the largest window the peer ever offered.
                    rwnd_blocked = True
                    break
                if (
                    n < mss
                    and n == avail
                    and not fin_ready
                    and not nodelay
                    and not probe
                    and self.snd_sml > self.snd_una
                    and self.snd_sml <= snd_nxt
                ):
                    # Nagle (RFC 896) in Minshall's form, as Linux tcp_nagle_check: hold a small
                    # segment while an earlier small segment is unacknowledged.
                    break
            elif room < 1 and snd_nxt > self.snd_una:
                rwnd_blocked = True
                break
            fin = fin_ready and snd_nxt + n == data_end
            flags = _ACK
            end = snd_nxt + n
            if n and (end == data_end or end - self.pushed_seq > half_max_window):
                flags |= _PSH
                self.pushed_seq = end
            if fin:
                flags |= _FIN
            if self.cwr_pending and n:
                flags |= _CWR
                self.cwr_pending = False
            self.sws_override = False
            payload = sndbuf.payload(snd_nxt, n) if n else b""
            seg_end = end + (1 if fin else 0)
            options = seg_options
            if options is None:
                options = self._options(now, sack=True)
                if not options.sack_blocks:
                    seg_options = options
            seg = emit(snd_nxt, flags, now, payload, options=options, tos=data_tos if n else 0)
            out.append(seg)
            self.snd_nxt = seg_end
            if fin:
                self.fin_seq = end
            if n > mss:
                # A super-segment: the link sends it as pcount packets (Linux gso_segs).
                on_sent(snd_nxt, seg_end, now, retransmit=False, rate=rate, fin=fin,
                        gso_size=mss)
                pcount = -(-n // mss)
                self.segs_out += pcount - 1
                self.data_segs_out += pcount
            else:
                on_sent(snd_nxt, seg_end, now, retransmit=False, rate=rate, fin=fin)
                if n:
                    self.data_segs_out += 1
            if n:
                self.bytes_sent += n
                self.last_data_sent = now
                if n % mss:
                    # Linux tcp_minshall_update: the segment ends with a piece below the MSS.
                    self.snd_sml = seg_end
            if self.retrans_stamp is None:
                self.retrans_stamp = now
            if in_recovery:
                self.prr_out += seg_end - snd_nxt
            in_flight += seg_end - snd_nxt
            cc.on_packet_sent(seg_end - snd_nxt, in_flight, now)
            sent_new = True
            if not xmit_timer_checked:
                # Once armed it stays armed for the rest of this loop.
                xmit_timer_checked = True
                if not self._xmit_timer_pending():
                    self._arm_rto(now)
            if fin or probe:
                break

        if probe:
            self._send_loss_probe(now, out, sent_new)
        elif sent_new:
            # RFC 8985 7.2: every transmission of new data (re)schedules the probe.
            self._schedule_loss_probe(now, advancing_rto=False)

        # 3. RFC 6675 rule 3: with nothing new to send, retransmit holes below the highest SACK
        # (not with RACK: Linux retransmits only what is marked lost).
        if (
            self.ca_state == CA_RECOVERY and self.sack_ok and not cwnd_blocked
            and not self.profile.rack_tlp
        ):
            in_flight = self._retransmit_lost(now, out, in_flight, rule3=True)
        self._transmit_done(now, in_flight, cwnd_blocked=cwnd_blocked, rwnd_blocked=rwnd_blocked)

    def _transmit_done(
        self, now: float, in_flight: int, *, cwnd_blocked: bool, rwnd_blocked: bool
    ) -> None:
        """The end of every transmit attempt: cwnd validation, app-limited marking, the
        chronographs and the persist timer."""
        sb = self.sb
        # Linux tcp_cwnd_validate: per window of data, remember the largest flight and whether
        # cwnd limited sending (RFC 7661); cwnd may only grow when it did.
        if self.snd_una >= self.cwnd_usage_seq or cwnd_blocked or in_flight > self.max_flight:
            self.max_flight = in_flight
            self.cwnd_usage_seq = self.snd_nxt
            self.cwnd_limited = cwnd_blocked
        # _update_app_limited and _chrono, inlined: this runs on every poll of a sending
        # connection, most of which change neither.
        sndbuf = self.sndbuf
        if (
            sndbuf._end - self.snd_nxt < self.mss_cache
            and in_flight < self.cc.cwnd
            and sb._lost_segs <= sb._retrans_segs
        ):
            rate = self.rate
            rate.app_limited = (rate.delivered + in_flight) or 1  # RateSampler.mark_app_limited
        busy = len(sb._recs) > sb._head
        sndbuf_limited = (
            not rwnd_blocked and not cwnd_blocked
            and sndbuf.capacity - (sndbuf._end - sndbuf.start) <= 0
        )
        if (
            busy == (self.busy_start is None)
            or rwnd_blocked == (self.rwnd_limited_start is None)
            or sndbuf_limited == (self.sndbuf_limited_start is None)
        ):
            self._chrono(now, busy=busy, rwnd=rwnd_blocked, sndbuf=sndbuf_limited)
        # RFC 9293 3.8.6.1: data waiting on a closed window with nothing in flight to draw an
        # ACK: the persist timer will probe.
        if (
            rwnd_blocked
            and not busy
            and not self.timers.is_set(TK_PERSIST)
            and not self.timers.is_set(TK_RETRANSMIT)
        ):
            self._arm_persist(now)

    def _retransmit_lost(
        self, now: float, out: list[TcpSegment], in_flight: int, *, rule3: bool = False
    ) -> int:
        sb = self.sb
        cwnd = self.cc.cwnd
        mss = self._current_mss()
        kind = (
            RetransmitKind.RTO if self.ca_state == CA_LOSS
            else RetransmitKind.SACK_RECOVERY if self.sack_ok else RetransmitKind.FAST
        )
        if not self.sack_ok and self.ca_state == CA_RECOVERY:
            # NewReno (RFC 6582): retransmit the first unacknowledged segment once per
            # (partial) ACK that asks for it.
            head = sb.first()
            if head is not None and not head.retrans_in_flight and not head.sacked and (
                in_flight < cwnd or self.prr_out == 0
            ):
                end = min(head.end, head.start + mss)
                in_flight += self._retransmit_range(head.start, end, now, out, kind)
            return in_flight
        while in_flight < cwnd:
            allow_new = not rule3 and self._can_send_new()
            nxt = sb.next_seg(self.snd_nxt, mss, allow_new)
            if nxt is None or nxt[0] >= self.snd_nxt:
                break
            start, end = nxt
            in_flight += self._retransmit_range(start, end, now, out, kind)
        return in_flight

    def _can_send_new(self) -> bool:
        avail = self.sndbuf.end - self.snd_nxt
        if avail <= 0:
            return self.shut_wr and self.fin_seq is None
        return self.snd_una + self.snd_wnd > self.snd_nxt

    def _retransmit_range(
        self, start: int, end: int, now: float, out: list[TcpSegment], kind: RetransmitKind
    ) -> int:
        """Send ``[start, end)`` again (data, and our FIN if it lies inside); return its length."""
        fin_seq = self.fin_seq
        fin = fin_seq is not None and start <= fin_seq < end
        data_end = fin_seq if fin and fin_seq is not None else end
        n = max(data_end - start, 0)
        payload = self.sndbuf.payload(start, n) if n else b""
        flags = _ACK | (_FIN if fin else 0)
        if n and start + n >= self.sndbuf.end:
            flags |= _PSH
        out.append(self._emit(start, flags, now, payload))
        self.sb.on_sent(start, end, now, retransmit=True, rate=self.rate)
        length = end - start
        self.total_retrans += 1
        self.bytes_retrans += n
        if n:
            # Linux counts every transmission of data here, retransmissions included
            # (__tcp_transmit_skb): tcpi_data_segs_out and tcpi_bytes_sent are wire totals.
            self.data_segs_out += 1
            self.bytes_sent += n
        self.undo_retrans = max(self.undo_retrans, 0) + 1
        if self.ca_state == CA_RECOVERY:
            self.prr_out += length
        if self.retrans_stamp is None:
            self.retrans_stamp = now
        if not self.timers.is_set(TK_RETRANSMIT) and not self.timers.is_set(
            TK_REO_TIMEOUT
        ):
            self._arm_rto(now)
        self._event(SegmentRetransmitted(now, self.conn_id, kind, start & MASK, end & MASK))
        self.cc.on_packet_sent(length, self._in_flight(), now)
        return length

    def _update_app_limited(self, in_flight: int) -> None:
        self.rate.on_app_limited(
            in_flight,
            unsent_bytes=self.sndbuf.end - self.snd_nxt,
            mss=self.mss_cache,
            cwnd=self.cc.cwnd,
            lost_segments=self.sb.lost_segments,
            retrans_segments=self.sb.retrans_out,
        )

    # -- timers owned by the sender ---------------------------------------------------

    def _arm_rto(self, now: float, *, since: float | None = None) -> None:
        """RFC 6298 5.1/5.3: (re)start the retransmission timer, RTO from now.

        ``since`` counts the RTO from an earlier moment instead (never firing in the past), as
        Linux tcp_rearm_rto does when the RTO replaces a loss-probe timer: it runs from the
        oldest outstanding segment's transmission, so a probe timer that new data keeps
        re-arming cannot postpone the RTO. With a user timeout (RFC 5482) the timer never runs
        past the moment it expires, so the abort happens on time (Linux
        tcp_clamp_rto_to_user_timeout).
        """
        when = (now if since is None else since) + self.rtt.rto
        if when < now:
            when = now
        ut = self.opts.user_timeout
        if ut is not None and self.retrans_stamp is not None:
            when = min(when, max(self.retrans_stamp + ut, now))
        self._set_xmit_timer(TK_RETRANSMIT, when)

    def _arm_persist(self, now: float) -> None:
        # RFC 9293 3.8.6.1 / Linux tcp_probe0_when: RTO with exponential backoff, capped.
        interval = min(self.rtt.base_rto * (1 << min(self.persist_backoff, 24)),
                       self.profile.max_rto)
        self.timers.set(TK_PERSIST, now + interval)

    def _send_probe(self, now: float) -> None:
        """Zero-window / keep-alive probe: an ACK with an old sequence number, which forces the
        peer to answer with its current window (Linux tcp_xmit_probe_skb, RFC 1122 4.2.3.6)."""
        self._queue_out(self._emit(self.snd_una - 1, _ACK, now, options=self._options(now, sack=False)))

    # -- the shared transmission-timer slot ----------------------------------------------

    def _xmit_timer_pending(self) -> bool:
        t = self.timers
        return (
            t.is_set(TK_RETRANSMIT) or t.is_set(TK_LOSS_PROBE)
            or t.is_set(TK_REO_TIMEOUT)
        )

    def _set_xmit_timer(self, kind: TimerKind, when: float) -> None:
        timers = self.timers
        for other in _XMIT_TIMERS:
            if other is not kind and timers.is_set(other):
                timers.cancel(other)
        timers.set(kind, when)

    # -- TLP --------------------------------------------------------------------------------

    def _schedule_loss_probe(self, now: float, *, advancing_rto: bool) -> bool:
        """Linux tcp_schedule_loss_probe (RFC 8985 7.2): arm the PTO; False if TLP does not
        apply (then the caller arms the RTO)."""
        sb = self.sb
        ca = self.ca_state
        if (
            not self.sack_ok
            or not sb
            or (ca != CA_OPEN and ca != CA_CWR)
            or not self.profile.rack_tlp
        ):
            return False
        rtt = self.rtt
        srtt = rtt.srtt
        if srtt:
            # One segment out: the receiver may be holding its ACK for the delayed-ACK timer.
            pto = 2 * srtt + (self.opts.min_rto if sb.packets_out == 1 else TCP_TIMEOUT_MIN)
        else:
            pto = TCP_TIMEOUT_INIT
        # Never later than the RTO would fire.
        rto = rtt.rto
        if advancing_rto:
            if rto < pto:
                pto = rto
        else:
            head = sb.first()
            rto_delta = (head.last_sent if head is not None else now) + rto - now
            if 0 < rto_delta < pto:
                pto = rto_delta
        timers = self.timers
        if timers.is_set(TK_RETRANSMIT):
            timers.cancel(TK_RETRANSMIT)
        if timers.is_set(TK_REO_TIMEOUT):
            timers.cancel(TK_REO_TIMEOUT)
        timers.set(TK_LOSS_PROBE, now + pto)
        return True

    def _on_loss_probe_timer(self, now: float) -> None:
        """The PTO expired: the probe goes out at the next poll (it may be new data, which
        only the transmit path sends)."""
        if not self.sb:
            return
        if (
            self.tlp_high_seq is not None  # at most one probe outstanding (RFC 8985 7.3)
            or self.state not in SENDING_STATES
            or self.ca_state in (CA_RECOVERY, CA_LOSS)
        ):
            head = self.sb.first()
            self._arm_rto(now, since=head.last_sent if head is not None else None)
            return
        self.tlp_pending = True

    def _send_loss_probe(self, now: float, out: list[TcpSegment], new_data_sent: bool) -> None:
        """Called by the transmit path after it tried new data with the probe's exemption
        from cwnd and Nagle: record the probe, or retransmit the last segment instead
        (Linux tcp_send_loss_probe)."""
        self.tlp_pending = False
        sb = self.sb
        retrans = False
        if new_data_sent:
            last = sb.last()
            assert last is not None
            start, end = last.start, last.end
        else:
            last = sb.last()
            if last is None or last.sacked:
                self._arm_rto(now)
                return
            mss = self._current_mss()
            # Only the last MSS of the last segment goes again (tcp_fragment in Linux).
            pcount = max(-(-(last.end - last.start) // mss), 1)
            start = last.start + (pcount - 1) * mss if pcount > 1 else last.start
            end = last.end
            self._retransmit_range(start, end, now, out, RetransmitKind.PROBE)
            retrans = True
        self.tlp_high_seq = self.snd_nxt
        self.tlp_retrans = retrans
        self.loss_probes += 1
        self._event(LossProbeSent(now, self.conn_id, start & 0xFFFFFFFF, end & 0xFFFFFFFF,
                                  retrans))
        self._arm_rto(now)
