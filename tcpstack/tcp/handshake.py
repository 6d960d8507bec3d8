"""Connection establishment: our SYN / SYN-ACK, the options the peer's SYN negotiates, the send
MSS, and the move to ESTABLISHED. A mixin of
:class:`tcpstack.tcp.connection.Connection`."""

from __future__ import annotations

from tcpstack.tcp.config import Profile
from tcpstack.tcp.state import ST_ESTABLISHED, ST_FIN_WAIT_1, ST_SYN_SENT
from tcpstack.tcp.timeouts import TimeoutMixin
from tcpstack.tcp.timers import TK_KEEPALIVE, TK_RETRANSMIT
from tcpstack.wire._fast import new_options
from tcpstack.wire.segment import TcpSegment, Timestamps

__all__ = ["HandshakeMixin", "TCP_MIN_SND_MSS"]

_F_SYN, _F_ACK, _F_ECE, _F_CWR = 0x02, 0x10, 0x40, 0x80
TCP_MIN_SND_MSS = 48  # Linux: the smallest MSS we will send with, whatever the peer says
# SYN option layouts by (id(profile), sack, ts, wscale) -> (profile, layout): the layout is a
# pure function of those, and every SYN and SYN-ACK needs one.
_SYN_LAYOUTS: dict[tuple[int, bool, bool, bool], tuple[Profile, tuple[int, ...]]] = {}


class HandshakeMixin(TimeoutMixin):
    """SYN handling of :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    def _build_syn(self, now: float) -> TcpSegment:
        opts = self.opts
        self.syn_pending = False
        # Plain ints: IntFlag's operators are Python-level calls (~1 us each); _emit takes ints.
        if self.state is ST_SYN_SENT:
            flags = _F_SYN
            sack, ts, wscale = opts.sack, opts.timestamps, opts.window_scaling
            if self._ecn_setup_syn():
                flags |= _F_ECE | _F_CWR  # RFC 3168 6.1.1: ECN-setup SYN
        else:
            flags = _F_SYN | _F_ACK
            sack, ts, wscale = self.sack_ok, self.ts_ok, self.wscale_ok
            if self.ecn_ok:
                flags |= _F_ECE  # ECN-setup SYN-ACK
        profile = self.profile
        key = (id(profile), sack, ts, wscale)
        cached = _SYN_LAYOUTS.get(key)
        if cached is not None and cached[0] is profile:
            layout = cached[1]
        else:
            layout = profile.syn_layout(mss=True, sack=sack, ts=ts, wscale=wscale)
            if len(_SYN_LAYOUTS) >= 64:
                _SYN_LAYOUTS.clear()
            _SYN_LAYOUTS[key] = (profile, layout)  # holding the profile keeps its id unique
        # The fast constructor: every value is already normal (bools, ints, a layout tuple).
        options = new_options(
            self.advmss,
            self.rcv_wscale_offer if wscale else None,
            bool(sack),
            (),
            Timestamps(self._tsval(now), self.ts_recent if self.passive else 0) if ts else None,
            (),
            layout,
        )
        seg = self._emit(self.iss, flags, now, options=options)
        retransmit = self.snd_nxt > self.iss
        self.sb.on_sent(self.iss, self.iss + 1, now, retransmit=retransmit, rate=self.rate,
                        syn=True)
        self.snd_nxt = self.iss + 1
        if self.retrans_stamp is None:
            self.retrans_stamp = now
        self.timers.set(TK_RETRANSMIT, now + self.rtt.rto)
        return seg

    def _ecn_setup_syn(self) -> bool:
        """Whether our (re)transmitted SYN asks for ECN: FreeBSD net.inet.tcp.ecn.maxretries
        gives up on it after that many retransmissions, in case a middlebox drops ECN SYNs."""
        limit = self.profile.ecn_syn_retries
        return self.opts.ecn and (limit is None or self.retransmits <= limit)

    def _learn_syn_options(self, syn: TcpSegment, now: float) -> None:
        o = syn.options
        opts = self.opts
        self.peer_mss = o.mss if o.mss else 536
        self.wscale_ok = opts.window_scaling and o.wscale is not None
        if self.wscale_ok and o.wscale is not None:
            self.snd_wscale = min(o.wscale, 14)  # RFC 7323 2.3: larger shifts are treated as 14
            self.rcv.rcv_wscale = self.rcv_wscale_offer
        else:
            self.snd_wscale = 0
            self.rcv.rcv_wscale = 0
        self.sack_ok = opts.sack and o.sack_permitted
        self.ts_ok = opts.timestamps and o.timestamps is not None
        if self.ts_ok and o.timestamps is not None:
            self.ts_recent = o.timestamps.tsval
            self.ts_recent_stamp = now
        flags = int(syn.flags)
        if self.passive:
            self.ecn_ok = opts.ecn and bool(flags & _F_ECE) and bool(flags & _F_CWR)
        else:
            self.ecn_ok = self._ecn_setup_syn() and bool(flags & _F_ECE) and not flags & _F_CWR
        self._sync_mss()
        if self.profile.rcvbuf_mss_roundup:
            self._roundup_rcvbuf()
        if not self.passive:
            self._use_bsd_window()

    def _use_bsd_window(self) -> None:
        # FreeBSD: a full tcpcb (active open, or a passive one once the syncache entry became a
        # socket on the handshake's ACK) checks sequence numbers against its free buffer; the
        # syncache only against the window its SYN-ACK announced.
        if not self.profile.window_clamp_growth:
            self.rcv.bsd_window = True

    def _roundup_rcvbuf(self) -> None:
        """FreeBSD tcp_mss(): grow the receive buffer to a whole number of segments, capped at
        sb_max, so the window it announces is not a segment fraction short."""
        rcv = self.rcv
        mss = self.mss_cache
        size = -(-rcv.capacity // mss) * mss
        cap = max(self.profile.receive_buffer_max, rcv.capacity)
        size = min(size, cap)
        if size > rcv.capacity:
            rcv.capacity = size
            if not self.profile.window_clamp_growth:
                rcv.rcv_ssthresh = size

    def _sync_mss(self) -> None:
        """The send MSS: peer's MSS, our own clamp and the path MTU, less the TS option
        (Linux mss_cache, tcpi_snd_mss)."""
        mss = min(self.peer_mss, self.advmss, self.pmtu - 40)
        if self.ts_ok:
            mss -= 12
        mss = max(mss, TCP_MIN_SND_MSS)
        if mss != self.mss_cache:
            self.mss_cache = mss
            self.cc.set_mss(mss)

    def _established(self, now: float) -> None:
        syn_retransmitted = self.retransmits > 0
        self.timers.cancel(TK_RETRANSMIT)
        self.retransmits = 0
        self.retrans_stamp = None
        self.rtt.reset_backoff()
        if syn_retransmitted:
            # RFC 5681 3.1: after a lost SYN or SYN-ACK the initial window is one segment.
            self.cc.cwnd = self.mss_cache
        self.cwnd_usage_seq = self.snd_nxt
        self._use_bsd_window()
        self._set_state(ST_ESTABLISHED, now)
        if self.shut_wr:
            self._set_state(ST_FIN_WAIT_1, now)
        ka = self.opts.keepalive
        if ka.enabled:
            self.timers.set(TK_KEEPALIVE, now + ka.idle)
