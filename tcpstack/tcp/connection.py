"""One TCP connection as a sans-IO state machine (RFC 9293 with Linux's choices).

The stack feeds it segments (:meth:`Connection.on_segment`) and time (:meth:`on_timer`), and
collects what to send (:meth:`poll_transmit`), the next deadline, readable data and events. It
never reads a clock: every entry point that depends on time takes ``now`` (seconds). Sequence
numbers are absolute integers inside, 32-bit on the wire.

Segment arrival follows RFC 9293 section 3.10.7 in its order: SYN-SENT handling; otherwise
PAWS (RFC 7323 5.3), the acceptability test, RST (with RFC 5961 3.2), SYN (RFC 5961 4.2), ACK
(RFC 5961 5.2 and 3.10.7.4), then the text and the FIN.
"""

from __future__ import annotations

from tcpstack.tcp.config import ConnectionOptions, SynFinPolicy
from tcpstack.tcp.events import (
    ChallengeAckSent,
    Event,
    IcmpReceived,
    ResetReceived,
)
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.introspect import build_info
from tcpstack.tcp.receiver import ACK_DELAYED, ACK_NOW
from tcpstack.tcp.sender import SENDING_STATES
from tcpstack.tcp.seq import unwrap
from tcpstack.tcp.state import (
    CA_LOSS,
    ST_CLOSE_WAIT,
    ST_CLOSED,
    ST_CLOSING,
    ST_ESTABLISHED,
    ST_FIN_WAIT_1,
    ST_FIN_WAIT_2,
    ST_LAST_ACK,
    ST_LISTEN,
    ST_SYN_RECEIVED,
    ST_SYN_SENT,
    ST_TIME_WAIT,
)
from tcpstack.tcp.timers import TK_DELACK, TK_KEEPALIVE, TK_PERSIST, TK_RETRANSMIT
from tcpstack.tcp.usercalls import UserCallsMixin
from tcpstack.wire.segment import (
    ECN_CE,
    ECN_NOT_ECT,
    IcmpMessage,
    IcmpType,
    TcpFlags,
    TcpSegment,
)

__all__ = ["Connection"]

MASK = 0xFFFFFFFF
_ACK = TcpFlags.ACK
_SYN = TcpFlags.SYN
_FIN = TcpFlags.FIN
_RST = TcpFlags.RST
# Plain-int bits: tests on ints avoid IntFlag's Python-level operators on every segment.
_F_FIN, _F_SYN, _F_RST, _F_ACK, _F_CWR = 0x01, 0x02, 0x04, 0x10, 0x80
PAWS_IDLE = 24 * 24 * 3600.0  # RFC 7323 5.5: ts_recent is invalid after 24 days idle


class Connection(UserCallsMixin):
    """A TCP connection. See the module docstring and DESIGN.md (layer ``tcp``)."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def from_syn(
        cls,
        syn: TcpSegment,
        *,
        iss: int,
        options: ConnectionOptions = ConnectionOptions(),  # noqa: B008 - frozen value
        now: float,
        conn_id: int = 0,
        ts_offset: int | None = None,
    ) -> Connection:
        """Passive open: the stack's listener accepted ``syn``; a SYN-ACK is queued."""
        if int(syn.flags) & (_F_SYN | _F_ACK | _F_RST | _F_FIN) != _F_SYN:
            raise ValueError(f"not a connection request: {syn!r}")
        conn = cls(
            (syn.dst, syn.dport), (syn.src, syn.sport), iss=iss, options=options,
            conn_id=conn_id, ts_offset=ts_offset,
        )
        conn.passive = True
        conn.created = conn.last_now = conn.last_rx = now
        conn._learn_syn_options(syn, now)
        conn.rcv.start(syn.seq, now)
        conn.snd_wnd = syn.window  # RFC 7323 2.2: the window of a SYN is never scaled
        conn.max_window = syn.window
        conn.snd_wl1 = conn.rcv.irs
        conn.snd_wl2 = iss
        conn._set_state(ST_SYN_RECEIVED, now)
        conn.syn_pending = True
        return conn

    def open_active(self, now: float) -> None:
        """Active open (RFC 9293 3.10.1 OPEN call): queue our SYN."""
        if self.state is not ST_CLOSED or self.error is not None or self.snd_nxt != self.iss:
            raise RuntimeError(f"open_active() on a connection in state {self.state}")
        self.created = self.last_now = self.last_rx = now
        self.syn_pending = True
        self._set_state(ST_SYN_SENT, now)

    def drain_events(self) -> list[Event]:
        events = self.events
        self.events = []
        return events

    def next_deadline(self) -> float | None:
        when = self.timers._earliest  # Timers.earliest(), inlined: asked after every poll
        if when is None:
            return None
        return max(when, self.last_now)

    def info(self, now: float) -> TCPInfo:
        return build_info(self, now)

    # -- output -------------------------------------------------------------------------

    def poll_transmit(self, now: float) -> list[TcpSegment]:
        """Everything that may be sent now."""
        if now > self.last_now:  # _advance(now), inlined: once per poll
            self.last_now = now
        due = self.timers._earliest
        if due is not None and due <= now:
            self.on_timer(now)
        out = self.outq
        if out is None:
            out = []
        else:
            self.outq = None
        if self.rst_pending is not None:
            out.append(self._build_active_rst(now, self.rst_pending))
            self.rst_pending = None
        st = self.state
        if self.syn_pending and st in (ST_SYN_SENT, ST_SYN_RECEIVED):
            out.append(self._build_syn(now))
        elif st in SENDING_STATES:
            self._transmit(now, out)
        if self.ack_now and st.synchronized:
            out.append(self._emit(self.snd_nxt, _ACK, now))
        return out

    # -- input --------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now > self.last_now:
            self.last_now = now
        due = self.timers._earliest
        if due is not None and due <= now:
            self.on_timer(now)

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one arriving segment (already demultiplexed to this connection)."""
        if now > self.last_now:  # _advance(now), inlined: once per segment
            self.last_now = now
        due = self.timers._earliest
        if due is not None and due <= now:
            self.on_timer(now)
        if self.ack_now and self.state.synchronized:
            # The previous segment asked for an immediate ACK that nothing has carried yet:
            # send it now, so each segment that needs one gets its own (dup ACKs count).
            self._queue_out(self._emit(self.snd_nxt, _ACK, now))
        # A segment longer than our MSS is packets coalesced by the link (GRO): Linux counts
        # its gso_segs.
        n = len(seg.payload)
        self.segs_in += -(-n // self.advmss) if n > self.advmss else 1
        st = self.state
        if st is ST_CLOSED or st is ST_LISTEN:
            self._reply_closed(seg, now)
            return
        self.last_rx = now
        if st is ST_SYN_SENT:
            self._on_segment_syn_sent(seg, now)
            return
        self._on_segment_sync(seg, now)

    def _reply_closed(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 3.10.7.1: a segment for a CLOSED connection draws a RST (unless it is one).
        if seg.flags & _RST:
            return
        if seg.flags & _ACK:
            self._queue_rst(seg.ack, None, now, "closed")
        else:
            self._queue_rst(0, (seg.seq + seg.seg_len) & MASK, now, "closed")

    def _on_segment_syn_sent(self, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.3."""
        flags = int(seg.flags)  # bits tested on an int: IntFlag's operators are slow calls
        ack_ok = False
        if flags & _F_ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_nxt:
                if not flags & _F_RST:
                    self._queue_rst(seg.ack, None, now, "bad ack in SYN-SENT")
                return
            ack_ok = True
        if flags & _F_RST:
            if ack_ok:  # RFC 5961 3.2: in SYN-SENT a RST is accepted only with an acceptable ACK
                self._event(ResetReceived(now, self.conn_id, "connection refused"))
                self._close(now, "connection refused")
            return
        if not flags & _F_SYN:
            return
        if flags & _F_FIN and self.profile.synfin_policy is SynFinPolicy.DROP:
            return  # FreeBSD net.inet.tcp.drop_synfin=1
        rcv = self.rcv
        syn_window = max(rcv.rcv_adv - rcv.rcv_nxt, 0)
        self._learn_syn_options(seg, now)
        rcv.start(seg.seq, now, syn_window)
        if ack_ok:
            ack = unwrap(seg.ack, self.snd_una)
            res = self.sb.on_ack(ack, [], now, self.mss_cache, rate=self.rate)
            self.snd_una = ack
            if res.rtt_sample is not None:
                self.rtt.on_rtt_sample(max(res.rtt_sample, 1e-6), now)
            elif self.ts_ok and seg.options.timestamps is not None and seg.options.timestamps.tsecr:
                self.rtt.on_rtt_sample(max(self._ts_age(seg.options.timestamps.tsecr, now), 1e-6), now)
            self.snd_wnd = seg.window
            self.max_window = max(self.max_window, seg.window)
            self.snd_wl1 = rcv.irs
            self.snd_wl2 = ack
            self._established(now)
            if self.sndbuf_auto:
                self._sndbuf_expand()  # Linux tcp_init_buffer_space
            self.ack_now = True
            if seg.payload or flags & _F_FIN:
                self._process_text(seg, rcv.irs + 1, now)
        else:
            # RFC 9293 3.5 simultaneous open: SYN-RECEIVED, our SYN goes again with an ACK.
            self.snd_wnd = seg.window
            self.max_window = max(self.max_window, seg.window)
            self.snd_wl1 = rcv.irs
            self._set_state(ST_SYN_RECEIVED, now)
            self.syn_pending = True
            if seg.payload and self.profile.queue_syn_text:
                # RFC 9293 3.10.7.3: "queue them for processing after the ESTABLISHED state
                # has been reached". A FIN with it is dropped, as from BSD's reassembly queue.
                self.syn_text = bytes(seg.payload[: rcv.capacity])

    def _acceptable(self, seq: int, seg_len: int) -> bool:
        """RFC 9293 3.10.7.4, first check: the segment overlaps the receive window."""
        rcv = self.rcv
        nxt = rcv.rcv_nxt
        wnd = rcv.window
        if seg_len == 0:
            if wnd == 0:
                return seq == nxt
            return nxt <= seq < nxt + wnd
        if wnd == 0:
            return False
        end = seq + seg_len - 1
        return (nxt <= seq < nxt + wnd) or (nxt <= end < nxt + wnd) or (seq < nxt and end >= nxt + wnd)

    def _on_segment_sync(self, seg: TcpSegment, now: float) -> None:
        rcv = self.rcv
        flags = int(seg.flags)
        # unwrap(seg.seq, rcv.rcv_nxt), inlined (a parsed segment's fields are 32-bit).
        rcv_nxt = rcv.rcv_nxt
        d = (seg.seq - rcv_nxt) & MASK
        seq = rcv_nxt + (d - 0x100000000 if d > 0x80000000 else d)
        payload = seg.payload
        seg_len = len(payload) + (flags & _F_FIN) + ((flags & _F_SYN) >> 1)
        ts = seg.options.timestamps if self.ts_ok else None

        if (
            self.state is ST_TIME_WAIT
            and self.profile.bsd_time_wait
            and not flags & _F_SYN
        ):
            self._time_wait_bsd(seg, flags, seq, now)
            return

        if (
            self.state is ST_SYN_RECEIVED
            and flags & _F_SYN
            and not flags & (_F_ACK | _F_RST)
            and seq == rcv.irs
        ):
            self.syn_pending = True  # the peer retransmitted its SYN: resend the SYN-ACK
            return

        # RFC 7323 5.3 PAWS: a timestamp older than ts_recent marks an old duplicate.
        if (
            ts is not None
            and not flags & _F_RST
            and 0 < (self.ts_recent - ts.tsval) & MASK < 0x80000000  # seq_lt(tsval, ts_recent)
            and now - self.ts_recent_stamp <= PAWS_IDLE
        ):
            self._dup_ack(now, seg)
            return

        if not self._acceptable(seq, seg_len):
            if flags & _F_RST:
                return
            if payload and seq < rcv.rcv_nxt:
                # A retransmission of data we have: report it (RFC 2883 D-SACK).
                rcv.note_duplicate(seq, min(seq + len(payload), rcv.rcv_nxt))
            if self.state is ST_TIME_WAIT and flags & _F_FIN:
                self._arm_time_wait(now)  # RFC 9293 3.10.7.4: restart the 2 MSL timeout
            self._dup_ack(now, seg)
            return

        if flags & _F_RST:
            # RFC 5961 3.2: only a RST exactly at RCV.NXT resets; others in the window draw a
            # challenge ACK.
            if seq == rcv.rcv_nxt or self.opts.insecure_rst:
                self._on_reset(now)
            else:
                self._challenge_ack(now, "rst")
            return

        if flags & _F_SYN:
            if self.opts.insecure_syn and seq >= rcv.rcv_nxt:
                # RFC 793 3.9 (FreeBSD net.inet.tcp.insecure_syn=1): a SYN in the window is an
                # error: reset and close. RFC 5961 4.2 answers with a challenge ACK instead.
                self._queue_rst(self.snd_nxt, rcv.rcv_nxt, now, "SYN in window")
                self._event(ResetReceived(now, self.conn_id, "SYN in window"))
                self._close(now, "connection reset by peer")
                return
            self._challenge_ack(now, "syn")  # RFC 5961 4.2
            return

        if not flags & _F_ACK:
            return  # RFC 9293: "if the ACK bit is off, drop the segment"

        # Timestamps: RFC 7323 4.3 ts_recent update, as Linux (seq not after the last ACK sent).
        if (
            ts is not None and seq <= rcv.rcv_wup
            and not 0 < (self.ts_recent - ts.tsval) & MASK < 0x80000000  # seq_lt, inlined
        ):
            self.ts_recent = ts.tsval
            self.ts_recent_stamp = now

        snd_una = self.snd_una
        d = (seg.ack - snd_una) & MASK  # unwrap(seg.ack, snd_una), inlined
        ack = snd_una + (d - 0x100000000 if d > 0x80000000 else d)
        if self.state is ST_SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_nxt:
                self._queue_rst(seg.ack, None, now, "bad ack in SYN-RECEIVED")
                return
            self.snd_wl1 = seq - 1  # the first ACK always sets the (now scaled) window
            self._established(now)
            if self.sndbuf_auto:
                self._sndbuf_expand()  # Linux tcp_init_buffer_space
            if self.syn_text:
                text, self.syn_text = self.syn_text, b""
                self._deliver_text(rcv.irs + 1, text, now)

        # RFC 5961 5.2 (and RFC 9293): ACKs for data never sent are dropped with an ACK; ACKs
        # too far in the past draw a challenge ACK.
        if ack > self.snd_nxt:
            self._dup_ack(now, seg)
            return
        max_window = self.max_window
        if ack < self.snd_una - (max_window if max_window > 1 else 1) and not self.opts.insecure_rst:
            self._challenge_ack(now, "ack")
            return
        if ack >= self.snd_una:
            self._process_ack(seg, flags, seq, ack, now)
            if self.state is ST_CLOSED:
                return
            self._after_ack_state(now)
            if self.state is ST_CLOSED:
                return

        if self.ecn_ok:
            self._process_ecn(seg, flags)
        if payload or flags & _F_FIN:
            self._process_text(seg, seq, now)

    def _after_ack_state(self, now: float) -> None:
        """Transitions on the acknowledgement of our FIN (RFC 9293 3.10.7.4)."""
        fin_seq = self.fin_seq
        if fin_seq is None or self.snd_una <= fin_seq:
            return
        st = self.state
        if st is ST_FIN_WAIT_1:
            self._set_state(ST_FIN_WAIT_2, now)
            if self.app_closed:
                self._arm_fin_wait_2(now)
        elif st is ST_CLOSING:
            self._enter_time_wait(now)
        elif st is ST_LAST_ACK:
            self._close(now)

    def _process_ecn(self, seg: TcpSegment, flags: int) -> None:
        ecn = seg.ecn
        if ecn != ECN_NOT_ECT:
            self.ecn_seen = True
        if ecn == ECN_CE:
            # RFC 3168 6.1.3: echo ECE until the sender says CWR; Linux also ACKs quickly.
            self.received_ce += 1
            self.ece_pending = True
            self.rcv.enter_quickack()
        elif flags & _F_CWR:
            self.ece_pending = False

    def _process_text(self, seg: TcpSegment, seq: int, now: float) -> None:
        """RFC 9293 3.10.7.4 seventh and eighth steps: segment text and FIN."""
        st = self.state
        if st not in (ST_ESTABLISHED, ST_FIN_WAIT_1, ST_FIN_WAIT_2):
            return  # text after the peer's FIN is ignored (RFC 9293)
        rcv = self.rcv
        data = seg.payload
        fin = bool(int(seg.flags) & _F_FIN)
        if self.app_closed and data and seq + len(data) > rcv.rcv_nxt:
            # Nobody will read it: RST (RFC 2525 2.17, Linux tcp_rcv_state_process).
            self._queue_rst(seg.ack, None, now, "data after close")
            self._close(now)
            return
        nxt = rcv.rcv_nxt
        if seq < nxt:
            cut = nxt - seq
            if data:
                rcv.note_duplicate(seq, min(seq + len(data), nxt))
            data = data[cut:]
            seq = nxt
        right = nxt + rcv.window
        if seq + len(data) > right:
            data = data[: max(right - seq, 0)]
            fin = False  # the FIN lay beyond the window
        if not data and not fin:
            if seg.payload:
                self.ack_now = True
            return
        if data:
            self.last_data_recv = now
            ts = seg.options.timestamps if self.ts_ok else None
            if ts is not None:
                if ts.tsecr and len(data) >= rcv.rcv_mss:
                    rcv.rtt_sample_from_ts(self._ts_age(ts.tsecr, now))
            else:
                rcv.rtt_measure_window(now)
        had_fin = rcv.fin_received
        decision = rcv.on_data(seq, data, fin, now)
        if decision == ACK_NOW:
            self.ack_now = True
        elif decision == ACK_DELAYED and not self.timers.is_set(TK_DELACK):
            self.timers.set(TK_DELACK, now + max(rcv.ato, 0.001))
        if rcv.fin_received and not had_fin:
            self._on_fin(now)

    def _deliver_text(self, seq: int, data: bytes, now: float) -> None:
        """Hand in-window text to the receiver and act on its ACK decision."""
        decision = self.rcv.on_data(seq, data, False, now)
        if decision == ACK_NOW:
            self.ack_now = True
        elif decision == ACK_DELAYED and not self.timers.is_set(TK_DELACK):
            self.timers.set(TK_DELACK, now + max(self.rcv.ato, 0.001))

    def _on_fin(self, now: float) -> None:
        st = self.state
        if st is ST_ESTABLISHED:
            self._set_state(ST_CLOSE_WAIT, now)
        elif st is ST_FIN_WAIT_1:
            if self.fin_seq is not None and self.snd_una > self.fin_seq:
                self._enter_time_wait(now)
            else:
                self._set_state(ST_CLOSING, now)
        elif st is ST_FIN_WAIT_2:
            self._enter_time_wait(now)

    def _time_wait_bsd(self, seg: TcpSegment, flags: int, seq: int, now: float) -> None:
        """A non-SYN segment in TIME-WAIT, as FreeBSD tcp_twcheck(): a RST is ignored (RFC 1337
        TIME-WAIT assassination), a segment without ACK dropped, a retransmitted FIN restarts the
        2 MSL timer, and anything but an exact duplicate ACK is answered with an ACK."""
        if flags & _F_RST or not flags & _F_ACK:
            return
        rcv = self.rcv
        if flags & _F_FIN and seq + len(seg.payload) + 1 == rcv.rcv_nxt:
            self._arm_time_wait(now)
        ack = unwrap(seg.ack, self.snd_una)
        if flags != _F_ACK or seg.payload or seq != rcv.rcv_nxt or ack != self.snd_nxt:
            self.ack_now = True

    def _enter_time_wait(self, now: float) -> None:
        self._set_state(ST_TIME_WAIT, now)
        # BSD's tcptw keeps no socket buffer: from here RCV.WND is the window last announced.
        self.rcv.bsd_window = False
        for kind in (TK_RETRANSMIT, TK_PERSIST, TK_KEEPALIVE):
            self.timers.cancel(kind)
        self._arm_time_wait(now)

    def _on_reset(self, now: float) -> None:
        st = self.state
        if st is ST_SYN_RECEIVED:
            reason: str | None = "connection refused"
        elif st in (ST_CLOSING, ST_LAST_ACK, ST_TIME_WAIT):
            reason = None  # RFC 9293: just close
        else:
            reason = "connection reset by peer"
        self._event(ResetReceived(now, self.conn_id, reason or "closed"))
        self._close(now, reason)

    def _dup_ack(self, now: float, seg: TcpSegment) -> None:
        """An ACK for an unacceptable segment (RFC 9293), rate-limited for segments without
        data like Linux tcp_oow_rate_limited (RFC 5961 section 7 spirit)."""
        if not seg.payload:
            if now - self.invalid_stamp < self.profile.invalid_ack_interval:
                return
            self.invalid_stamp = now
        self.ack_now = True

    def _challenge_ack(self, now: float, reason: str) -> None:
        """RFC 5961 challenge ACK, limited per second (section 7) and per connection (Linux)."""
        if now - self.invalid_stamp < self.profile.invalid_ack_interval:
            return
        if int(now) != int(self.challenge_stamp):
            self.challenge_stamp = now
            self.challenge_count = 0
        if self.challenge_count >= self.profile.challenge_ack_limit:
            return
        self.challenge_count += 1
        self.invalid_stamp = now
        self._queue_out(self._emit(self.snd_nxt, _ACK, now))
        self._event(ChallengeAckSent(now, self.conn_id, reason))

    # -- ICMP ---------------------------------------------------------------------------

    def on_icmp(self, msg: IcmpMessage, now: float) -> None:
        """An ICMP error quoting this connection (the stack validated it, RFC 5927)."""
        self._advance(now)
        self._event(IcmpReceived(now, self.conn_id, msg.type, msg.code, msg.next_hop_mtu))
        if msg.type == IcmpType.DEST_UNREACHABLE and msg.code == 4 and msg.next_hop_mtu:
            # RFC 1191 path MTU discovery: shrink the MSS and resend what no longer fits.
            mtu = max(int(msg.next_hop_mtu), 68)
            if mtu < self.pmtu:
                self.pmtu = mtu
                self._sync_mss()
                self._pmtu_retransmit(now)
        elif msg.type == IcmpType.DEST_UNREACHABLE and self.state is ST_SYN_SENT and msg.code in (2, 3):
            # RFC 1122 4.2.3.9: protocol/port unreachable is a hard error for a connect.
            self._close(now, "connection refused")

    def _pmtu_retransmit(self, now: float) -> None:
        """Linux tcp_simple_retransmit: what no longer fits the path went nowhere; resend it
        at once in pieces of the new MSS. Not a congestion signal: cwnd and ssthresh stay."""
        if not self.state.synchronized or not self.sb.mark_oversized_lost(self.mss_cache):
            return
        if self.ca_state != CA_LOSS:
            self.ca_state = CA_LOSS
            self.recover = self.snd_nxt
            self.undo_marker = None
            self.tlp_high_seq = None
            self.pmtu_loss = True

