"""The connection's state (every variable in one place) and how a segment is put on the wire.

:class:`ConnectionCore` is the base of :class:`tcpstack.tcp.connection.Connection`; the sender
(:mod:`tcpstack.tcp.sender`) and loss recovery (:mod:`tcpstack.tcp.recovery`) are mixins over it,
so the per-segment paths touch plain attributes, no indirection. Sequence numbers are absolute
(unwrapped) integers everywhere; :meth:`ConnectionCore._emit` wraps them to 32 bits.
"""

from __future__ import annotations

from tcpstack.tcp.buffers import SendBuffer, as_payload
from tcpstack.tcp.config import ConnectionOptions, ResolvedOptions, resolve_options
from tcpstack.tcp.congestion import CongestionControl, create_congestion_control
from tcpstack.tcp.events import Event, ResetSent, StateChanged
from tcpstack.tcp.fastinit import fast_constructor
from tcpstack.tcp.rate import RateSampler
from tcpstack.tcp.receiver import Receiver, window_scale_for
from tcpstack.tcp.rtt import RttEstimator
from tcpstack.tcp.scoreboard import Scoreboard
from tcpstack.tcp.state import CA_OPEN, ST_CLOSED, TcpState
from tcpstack.tcp.timers import TK_DELACK, Timers
from tcpstack.wire._fast import new_options, new_segment
from tcpstack.wire.segment import (
    ECN_ECT0,
    NO_OPTIONS,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
)

__all__ = ["ConnectionCore", "SendBuffer", "MASK", "MAX_EVENTS"]

MASK = 0xFFFFFFFF
MAX_EVENTS = 4096  # events kept until drain_events(); older ones are dropped and counted
TCP_MSS_DEFAULT = 536  # RFC 9293 3.7.1: the send MSS when the peer sends no MSS option
TS_OPTION_LEN = 12  # nop, nop, kind 8 (10 bytes): what Linux subtracts from mss_cache
SACK_OPTION_BASE = 4  # nop, nop, kind 5, length (RFC 2018 section 3)
SACK_BLOCK_LEN = 8

_ACK = TcpFlags.ACK
_RST = TcpFlags.RST
_SYN = TcpFlags.SYN
# Plain-int flag bits for tests on the hot path, and every flag combination interned once.
_F_FIN, _F_SYN, _F_RST, _F_PSH, _F_ACK, _F_ECE, _F_CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x40, 0x80
_FLAG_VALUES: tuple[TcpFlags, ...] = tuple(TcpFlags(i) for i in range(256))
_new_state_changed = fast_constructor(StateChanged)  # several per connection's life
_new_tuple = tuple.__new__


class ConnectionCore:
    """All per-connection state, event emission and segment construction."""

    # Slots, not a __dict__: an idle connection is mostly this object, and 10,000 of them must
    # fit in 8 KiB each (issue 4). Every mixin of Connection declares ``__slots__ = ()`` so the
    # subclass adds no dict either. A new attribute must be listed here as well as set in
    # __init__ (tests/tcp/test_slots.py checks both directions).
    __slots__ = (
        "options", "opts", "profile", "conn_id", "local_addr", "local_port", "remote_addr",
        "remote_port", "state", "error", "passive", "syn_text", "iss", "snd_una", "snd_nxt",
        "snd_wnd", "snd_wl1", "snd_wl2", "max_window", "snd_wscale", "sndbuf", "sndbuf_auto",
        "shut_wr", "fin_seq", "app_closed", "idle_check", "snd_sml", "pushed_seq", "advmss",
        "pmtu", "peer_mss", "mss_cache", "ts_ok", "sack_ok", "wscale_ok", "ecn_ok", "ts_recent",
        "ts_recent_stamp", "ts_offset", "rcv_wscale_offer", "rcv", "sb", "rate", "rtt", "cc",
        "ca_state", "recover", "prr_delivered", "prr_out", "recover_fs", "dupacks",
        "prior_cwnd", "prior_ssthresh", "undo_marker", "undo_retrans", "undos", "reordering",
        "cwnd_limited", "max_flight", "cwnd_usage_seq", "loss_rto_start", "pmtu_loss",
        "rack_xmit_ts", "rack_end_seq", "rack_rtt", "rack_reo_wnd_steps",
        "rack_reo_wnd_persist", "rack_dsack_round", "tlp_pending", "tlp_high_seq",
        "tlp_retrans", "loss_probes", "timers", "retransmits", "retrans_stamp",
        "syn_retries_left", "probes_out", "persist_backoff", "probe_start", "sws_override",
        "last_rx", "last_tx_data", "challenge_stamp", "challenge_count", "invalid_stamp",
        "peer_zero_window", "outq", "ack_now", "rst_pending", "syn_pending", "ece_pending",
        "cwr_pending", "events", "events_dropped", "segs_out", "segs_in", "data_segs_out",
        "bytes_sent", "bytes_retrans", "bytes_acked", "total_retrans", "total_rto",
        "total_rto_recoveries", "sack_reneging", "total_rto_time", "dsack_dups",
        "delivered_segs", "reord_seen", "lost_total", "delivered_ce", "received_ce", "ecn_seen",
        "last_data_sent", "last_data_recv", "last_ack_recv", "last_ack_sent", "busy_time",
        "busy_start", "rwnd_limited_time", "rwnd_limited_start", "sndbuf_limited_time",
        "sndbuf_limited_start", "last_now", "created", "gso_max_size", "__weakref__",
    )

    def __init__(
        self,
        local: tuple[str, int],
        remote: tuple[str, int],
        *,
        iss: int,
        options: ConnectionOptions = ConnectionOptions(),  # noqa: B008 - frozen value
        conn_id: int = 0,
        ts_offset: int | None = None,
    ) -> None:
        if not 0 <= iss <= MASK:
            raise ValueError(f"iss must be a 32-bit sequence number, got {iss!r}")
        opts: ResolvedOptions = resolve_options(options)
        self.options = options
        self.opts = opts
        profile = opts.profile_obj
        self.profile = profile
        self.conn_id = conn_id
        self.local_addr, self.local_port = local[0], int(local[1])
        self.remote_addr, self.remote_port = remote[0], int(remote[1])
        if not (0 < self.local_port <= 0xFFFF and 0 < self.remote_port <= 0xFFFF):
            for name, port in (("local", self.local_port), ("remote", self.remote_port)):
                if not 0 < port <= 0xFFFF:
                    raise ValueError(f"{name} port must be 1..65535, got {port}")
        self.state = ST_CLOSED
        self.error: str | None = None
        self.passive = False
        # Text of a SYN taken in SYN-SENT (simultaneous open), held until ESTABLISHED.
        self.syn_text = b""

        # Send sequence space (RFC 9293 3.3.1), absolute numbers.
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.max_window = 0  # largest window the peer offered (RFC 1122 4.2.3.4 / RFC 5961 5.2)
        self.snd_wscale = 0
        self.sndbuf = SendBuffer(opts.send_buffer, iss + 1)
        # Linux SOCK_SNDBUF_LOCK: a buffer the user sets is final, else it autotunes.
        self.sndbuf_auto = options.send_buffer is None and profile.send_buffer_max > 0
        self.shut_wr = False  # shutdown_write()/close(): a FIN follows the queued data
        self.fin_seq: int | None = None  # absolute sequence number of our FIN once sent
        self.app_closed = False  # close() called: no more reads either (orphaned socket)
        self.idle_check = False  # data queued with nothing in flight: check for idle restart
        self.snd_sml = iss  # end of the last small segment sent (Minshall's Nagle, Linux)
        self.pushed_seq = iss  # end of the last segment that carried PSH

        # MSS (RFC 9293 3.7.1, RFC 879/6691) and path MTU.
        self.advmss = opts.mss
        self.pmtu = opts.mtu
        # Largest IPv4 packet the link segments for us (TSO/GSO; Link.gso_max_size), set by
        # the stack; 0: every segment is at most one MSS.
        self.gso_max_size = 0
        self.peer_mss = TCP_MSS_DEFAULT
        self.mss_cache = min(self.advmss, TCP_MSS_DEFAULT)

        # Negotiated options.
        self.ts_ok = False
        self.sack_ok = False
        self.wscale_ok = False
        self.ecn_ok = False
        self.ts_recent = 0
        self.ts_recent_stamp = 0.0
        self.ts_offset = (
            (iss * 2654435761 + 0x5BD1E995) & MASK if ts_offset is None else ts_offset & MASK
        )
        rbuf_for_scale = opts.receive_buffer
        if options.receive_buffer is None:
            # Linux derives the scale from the largest buffer autotuning may reach (tcp_rmem[2]),
            # not the initial one; a buffer the user set (SO_RCVBUF) is final.
            rbuf_for_scale = max(rbuf_for_scale, profile.receive_buffer_max)
        self.rcv_wscale_offer = window_scale_for(rbuf_for_scale) if opts.window_scaling else 0

        self.rcv = Receiver(
            capacity=opts.receive_buffer,
            rcv_wscale=0,
            advmss=self.advmss,
            max_ooo_bytes=opts.max_ooo_bytes,
            max_ooo_ranges=opts.max_ooo_ranges,
            ato_min=profile.delayed_ack_timeout,
        )
        self.rcv.quickack = opts.quickack
        if options.receive_buffer is None and profile.moderate_rcvbuf:
            self.rcv.autotune_max = profile.receive_buffer_max  # else SOCK_RCVBUF_LOCK
        if profile.quickack_segments == 0:
            self.rcv.quick = 0
            self.rcv.bsd_delack = True
        if not profile.window_clamp_growth:
            # BSD: offer the whole free buffer at once, no rcv_ssthresh ramp, no SWS step.
            self.rcv.rcv_ssthresh = opts.receive_buffer
            self.rcv.rcv_space = opts.receive_buffer
            self.rcv.min_window_update = 1

        # Loss detection, RTT, congestion control, delivery rate.
        self.sb = Scoreboard(dupthresh=profile.dup_ack_threshold)
        self.rate = RateSampler()
        self.rtt = RttEstimator(
            profile=profile.name,
            initial_rto=opts.initial_rto,
            min_rto=opts.min_rto,
            max_rto=profile.max_rto,
            slop=profile.rto_slop,
        )
        self.cc: CongestionControl = self._new_cc(self.mss_cache)
        self.ca_state = CA_OPEN
        self.recover = iss  # RFC 6582 "recover" / Linux high_seq
        self.prr_delivered = 0  # RFC 6937
        self.prr_out = 0
        self.recover_fs = 0
        self.dupacks = 0  # RFC 5681 duplicate ACK counter (non-SACK NewReno)
        self.prior_cwnd = 0  # for undo after a spurious recovery (D-SACK)
        self.prior_ssthresh = 0
        # Linux undo_marker / undo_retrans: snd_una when the episode began, and how many of its
        # retransmissions D-SACK has not yet shown spurious (-1: none made yet).
        self.undo_marker: int | None = None
        self.undo_retrans = -1
        self.undos = 0
        self.reordering = profile.dup_ack_threshold  # Linux tp->reordering, in segments
        self.cwnd_limited = False
        self.max_flight = 0  # largest flight in the current window (Linux max_packets_out)
        self.cwnd_usage_seq = iss  # end of the window over which cwnd use is tracked
        self.loss_rto_start = 0.0
        self.pmtu_loss = False  # the LOSS state was entered for a path MTU drop, not an RTO

        # RACK (RFC 8985 6.1): the most recently sent delivered segment and its RTT.
        self.rack_xmit_ts: float | None = None
        self.rack_end_seq = 0
        self.rack_rtt = 0.0
        self.rack_reo_wnd_steps = 1  # RACK.reo_wnd_mult
        self.rack_reo_wnd_persist = 0
        self.rack_dsack_round: int | None = None
        # TLP (RFC 8985 7): a probe is due at the next poll / the probe outstanding.
        self.tlp_pending = False
        self.tlp_high_seq: int | None = None
        self.tlp_retrans = False
        self.loss_probes = 0  # Linux LINUX_MIB_TCPLOSSPROBES, per connection

        # Timers and retransmission bookkeeping.
        self.timers = Timers()
        self.retransmits = 0  # Linux icsk_retransmits: RTO expiries without progress
        self.retrans_stamp: float | None = None  # first (re)transmission of the oldest unacked
        self.syn_retries_left = opts.syn_retries
        self.probes_out = 0  # zero-window / keep-alive probes unanswered (tcpi_probes)
        self.persist_backoff = 0
        self.probe_start = 0.0
        self.sws_override = False  # persist timer expired with a small open window
        self.last_rx = 0.0  # any segment received (keep-alive idle time)
        self.last_tx_data = 0.0
        self.challenge_stamp = -1e18
        self.challenge_count = 0
        self.invalid_stamp = -1e18
        self.peer_zero_window = False

        # Output queued by input processing (challenge ACKs, RSTs, dup ACKs), and ACK state.
        # None while empty (most of the time): no list per idle or TIME-WAIT connection.
        self.outq: list[TcpSegment] | None = None
        self.ack_now = False
        self.rst_pending: str | None = None  # reason of a RST|ACK to send at the next poll
        self.syn_pending = False  # our SYN / SYN-ACK must be (re)sent
        self.ece_pending = False  # ECN: echo ECE until the peer's CWR (RFC 3168 6.1.3)
        self.cwr_pending = False  # ECN: set CWR on the next new data segment

        # Events.
        # A list, not a deque: an empty deque still holds a 64-slot block, a list nothing.
        self.events: list[Event] = []
        self.events_dropped = 0

        # Counters for TCPInfo.
        self.segs_out = 0
        self.segs_in = 0
        self.data_segs_out = 0
        self.bytes_sent = 0
        self.bytes_retrans = 0
        self.bytes_acked = 0
        self.total_retrans = 0
        self.total_rto = 0
        self.total_rto_recoveries = 0
        self.sack_reneging = 0  # RTOs that found the peer had reneged (Linux TCPSACKReneging)
        self.total_rto_time = 0.0
        self.dsack_dups = 0
        self.delivered_segs = 0
        self.reord_seen = 0
        self.lost_total = 0
        self.delivered_ce = 0
        self.received_ce = 0
        self.ecn_seen = False
        self.last_data_sent: float | None = None
        self.last_data_recv: float | None = None
        self.last_ack_recv: float | None = None
        self.last_ack_sent: float | None = None
        self.busy_time = 0.0
        self.busy_start: float | None = None
        self.rwnd_limited_time = 0.0
        self.rwnd_limited_start: float | None = None
        self.sndbuf_limited_time = 0.0
        self.sndbuf_limited_start: float | None = None
        self.last_now = 0.0
        self.created = 0.0

    def peek(self, max_bytes: int) -> bytes:
        """The next ``max_bytes`` readable bytes, left in the receive buffer (MSG_PEEK)."""
        return self.rcv.peek(max_bytes)

    @property
    def unsent_bytes(self) -> int:
        """Queued bytes not yet sent (tcpi_notsent_bytes)."""
        return max(self.sndbuf.end - self.snd_nxt, 0)

    # -- construction helpers ----------------------------------------------------------

    def _new_cc(self, mss: int, opts: ResolvedOptions | None = None) -> CongestionControl:
        opts = self.opts if opts is None else opts
        iw = self.profile.initial_window_segments * mss
        if opts.congestion == "cubic":
            cc = create_congestion_control("cubic", mss, iw, hystart=opts.hystart)
        else:
            cc = create_congestion_control(opts.congestion, mss, iw)
        cc.abc_limit_segments = self.profile.abc_limit_segments
        return cc

    # -- events and state --------------------------------------------------------------

    def _event(self, event: Event) -> None:
        events = self.events
        if len(events) >= MAX_EVENTS:
            del events[0]  # rare (nobody drains): a 32 KiB memmove
            self.events_dropped += 1
        events.append(event)

    def _queue_out(self, seg: TcpSegment) -> None:
        """Queue a segment made by input processing for the next poll_transmit."""
        if self.outq is None:
            self.outq = [seg]
        else:
            self.outq.append(seg)

    def _set_state(self, new: TcpState, now: float) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        events = self.events  # _event(), inlined: several state changes per connection
        if len(events) >= MAX_EVENTS:
            del events[0]
            self.events_dropped += 1
        events.append(_new_state_changed(now, self.conn_id, old, new))

    def _on_state_closed(self, now: float) -> None:
        """Hook for the connection: stop everything once CLOSED."""
        self.timers.cancel_all()

    def _abort_timeout(self, now: float, reason: str) -> None:
        """Give up on an unresponsive peer: no RST (Linux tcp_write_err), just CLOSED."""
        self._close(now, reason)

    def _close(self, now: float, error: str | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self._set_state(ST_CLOSED, now)
        self._on_state_closed(now)

    # -- timestamps --------------------------------------------------------------------

    def _tsval(self, now: float) -> int:
        # RFC 7323 5.4: a 1 ms clock, as Linux since 4.13 (tcp_time_stamp_ts).
        return (int(now * 1000.0) + self.ts_offset) & MASK

    def _ts_age(self, tsecr: int, now: float) -> float:
        """Seconds since we sent the TSval that ``tsecr`` echoes (RFC 7323 4.1 RTTM)."""
        return ((self._tsval(now) - tsecr) & MASK) / 1000.0

    # -- segment construction ------------------------------------------------------------

    def _current_mss(self) -> int:
        """Payload bytes the next segment may carry (Linux tcp_current_mss): ``mss_cache`` less
        the SACK blocks it will carry, so that a segment never outgrows the path MTU."""
        mss = self.mss_cache
        if self.sack_ok and self.rcv.has_sack_info():
            blocks = self.rcv.sack_block_count(self.profile.max_sack_blocks(ts=self.ts_ok))
            if blocks:
                mss -= SACK_OPTION_BASE + SACK_BLOCK_LEN * blocks
        return mss

    def _options(self, now: float, *, sack: bool) -> TcpOptions:
        rcv = self.rcv
        blocks = (
            rcv.sack_blocks(self.profile.max_sack_blocks(ts=self.ts_ok))
            # rcv.has_sack_info(), inlined: asked for every segment sent
            if sack and self.sack_ok and (rcv._dsack is not None or rcv.ooo._held > 0) else None
        )
        if self.ts_ok:
            # tuple.__new__ straight: the NamedTuple's own __new__ is a Python-level call.
            ts: Timestamps | None = _new_tuple(
                Timestamps, ((int(now * 1000.0) + self.ts_offset) & MASK, self.ts_recent)
            )
            if not blocks:
                return new_options(None, None, False, (), ts, (), self.profile.data_ts_layout)
        elif not blocks:
            return NO_OPTIONS
        else:
            ts = None
        sack_blocks = tuple([SackBlock(s & MASK, e & MASK) for s, e in blocks])
        layout = self.profile.data_layout(ts=ts is not None, sack=True)
        return new_options(None, None, False, sack_blocks, ts, (), layout)

    def _emit(
        self,
        seq: int,
        flags: int,
        now: float,
        payload: bytes | memoryview = b"",
        *,
        options: TcpOptions | None = None,
        tos: int = 0,
    ) -> TcpSegment:
        """Build one segment from the current state; account for it (counters, ACK state).

        ``flags`` may be a plain ``int``: bits are tested on ints (IntFlag's operators are
        Python-level calls) and the segment gets the interned :class:`TcpFlags` value.
        """
        rcv = self.rcv
        flags = int(flags)
        has_ack = flags & _F_ACK
        if flags & _F_SYN:
            window = rcv.select_window(syn=True)
        elif flags & _F_RST:
            window = 0
        else:
            window = rcv.select_window()
        if options is None:
            options = self._options(now, sack=bool(has_ack)) if not flags & _F_RST else (
                new_options(None, None, False, (), Timestamps(self._tsval(now), self.ts_recent),
                            (), self.profile.data_ts_layout)
                if self.ts_ok else NO_OPTIONS
            )
        if self.ece_pending and has_ack and not flags & _F_SYN:
            flags |= _F_ECE
        # The fast constructor skips attrs' converters: every value here is already normal. A
        # payload view comes only from a send buffer with views on (SendBuffer.payload), whose
        # consumer builds the packet at once: a read-only view of immutable bytes, which the
        # codec reads as it reads bytes, and no copy of 64 KiB per segment.
        seg = new_segment(
            self.local_addr, self.remote_addr, self.local_port, self.remote_port,
            seq & MASK, rcv.rcv_nxt & MASK if has_ack else 0, _FLAG_VALUES[flags], window, 0,
            options, payload if type(payload) is bytes else as_payload(payload), 64, tos, 0,
            True,
        )
        self.segs_out += 1
        if has_ack:
            rcv.on_ack_sent()
            self.ack_now = False
            self.last_ack_sent = now
            timers = self.timers
            if timers._deadlines[TK_DELACK] is not None:  # Timers.is_set, inlined
                timers.cancel(TK_DELACK)
        return seg

    def _sndbuf_expand(self) -> None:
        """Linux tcp_sndbuf_expand: room for two congestion windows (at least the initial
        window, at least reordering + 1 segments) of segments, up to ``send_buffer_max``.

        Linux sizes sk_sndbuf in skb truesize (about three times the payload of a 1448-byte
        segment); this buffer holds payload bytes only, so a segment costs its MSS.
        """
        mss = self.mss_cache
        profile = self.profile
        # Conditional expressions, not min/max (which parse keyword arguments on every call in
        # CPython 3.11): this runs on every ACK that frees buffer space.
        nr_segs = -(-self.cc.cwnd // mss)
        if nr_segs < profile.initial_window_segments:
            nr_segs = profile.initial_window_segments
        if nr_segs < self.reordering + 1:
            nr_segs = self.reordering + 1
        size = 2 * nr_segs * mss
        if size > profile.send_buffer_max:
            size = profile.send_buffer_max
        sndbuf = self.sndbuf
        if size > sndbuf.capacity:
            sndbuf.capacity = size

    def _data_tos(self) -> int:
        # RFC 3168 6.1.2: ECT(0) on data segments once ECN is negotiated (never on pure ACKs,
        # retransmissions are allowed it by RFC 3168 6.1.5 in Linux only when not ECE... we keep
        # it on new data only).
        return ECN_ECT0 if self.ecn_ok else 0

    def _queue_rst(self, seq: int, ack: int | None, now: float, reason: str) -> None:
        """Queue a RST (RFC 9293 3.10.7: <SEQ=seq><CTL=RST> or with <ACK=ack><CTL=RST,ACK>)."""
        flags = _RST | _ACK if ack is not None else _RST
        seg = TcpSegment(
            self.local_addr, self.remote_addr, self.local_port, self.remote_port,
            seq & MASK, (ack & MASK) if ack is not None else 0, flags, 0, 0, NO_OPTIONS,
            b"", 64, 0, 0, True,
        )
        self.segs_out += 1
        self._queue_out(seg)
        self._event(ResetSent(now, self.conn_id, reason))

    # -- chronographs (Linux tcp_chrono_*) -----------------------------------------------

    def _chrono(self, now: float, *, busy: bool, rwnd: bool, sndbuf: bool) -> None:
        """Track time spent busy (data in flight), limited by the peer's window, and limited by
        the send buffer, in the spirit of Linux's tcp_chrono_start/stop."""
        if busy:
            if self.busy_start is None:
                self.busy_start = now
        elif self.busy_start is not None:
            self.busy_time += now - self.busy_start
            self.busy_start = None
        if rwnd:
            if self.rwnd_limited_start is None:
                self.rwnd_limited_start = now
        elif self.rwnd_limited_start is not None:
            self.rwnd_limited_time += now - self.rwnd_limited_start
            self.rwnd_limited_start = None
        if sndbuf:
            if self.sndbuf_limited_start is None:
                self.sndbuf_limited_start = now
        elif self.sndbuf_limited_start is not None:
            self.sndbuf_limited_time += now - self.sndbuf_limited_start
            self.sndbuf_limited_start = None
