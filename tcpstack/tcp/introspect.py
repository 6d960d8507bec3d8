"""Build a :class:`TCPInfo` snapshot from a connection's live state (Linux tcp_get_info).

Units as Linux: microseconds for rtt, rttvar, min_rtt, rto, ato, rcv_rtt and the chrono times;
milliseconds for last_* ages and total_rto_time; segments for cwnd, ssthresh, unacked, sacked,
lost, retrans, delivered; bytes for byte counters; bytes/s for rates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpstack.tcp.congestion import TCP_INFINITE_SSTHRESH
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import TcpiOption

if TYPE_CHECKING:
    from tcpstack.tcp.core import ConnectionCore

__all__ = ["build_info"]

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


def _us(seconds: float | None) -> int:
    if seconds is None:
        return 0
    return min(max(int(round(seconds * 1e6)), 0), U32_MAX)


def _age_ms(now: float, then: float | None) -> int:
    if then is None:
        return 0
    return min(max(int((now - then) * 1000 + 1e-6), 0), U32_MAX)


def build_info(conn: ConnectionCore, now: float) -> TCPInfo:
    rcv = conn.rcv
    sb = conn.sb
    cc = conn.cc
    rtt = conn.rtt
    rate = conn.rate
    mss = max(conn.mss_cache, 1)
    options = TcpiOption(0)
    if conn.ts_ok:
        options |= TcpiOption.TIMESTAMPS
    if conn.sack_ok:
        options |= TcpiOption.SACK
    if conn.wscale_ok:
        options |= TcpiOption.WSCALE
    if conn.ecn_ok:
        options |= TcpiOption.ECN
    if conn.ecn_seen:
        options |= TcpiOption.ECN_SEEN
    ssthresh = cc.ssthresh
    snd_ssthresh = TCP_INFINITE_SSTHRESH if ssthresh >= TCP_INFINITE_SSTHRESH else ssthresh // mss
    cwnd_segs = max(cc.cwnd // mss, 1) if cc.cwnd else 0
    srtt = rtt.srtt
    pacing = 0
    if srtt:
        # Linux tcp_update_pacing_rate: 200% of cwnd/srtt in slow start, 120% after.
        ratio = 2.0 if cc.in_slow_start else 1.2
        pacing = int(cc.cwnd / srtt * ratio)
    min_rtt = rtt.min_rtt

    def running(total: float, start: float | None) -> int:
        if start is not None:
            total += max(now - start, 0.0)
        return min(int(total * 1e6), U64_MAX)

    return TCPInfo(
        state=conn.state.linux_code,
        ca_state=int(conn.ca_state),
        retransmits=conn.retransmits,
        probes=conn.probes_out,
        backoff=max(rtt.backoff, conn.persist_backoff),
        options=int(options),
        snd_wscale=conn.snd_wscale if conn.wscale_ok else 0,
        rcv_wscale=rcv.rcv_wscale if conn.wscale_ok else 0,
        delivery_rate_app_limited=bool(rate.rate_app_limited),
        fastopen_client_fail=0,  # no TCP Fast Open in this engine
        rto=_us(rtt.rto),
        ato=_us(rcv.ato),
        snd_mss=conn.mss_cache,
        rcv_mss=rcv.rcv_mss,
        unacked=sb.packets_out,
        sacked=sb.sacked_segments,
        lost=sb.lost_segments,
        retrans=sb.retrans_out,
        fackets=0,  # Linux removed FACK accounting (always 0 since 4.18)
        last_data_sent=_age_ms(now, conn.last_data_sent),
        last_ack_sent=_age_ms(now, conn.last_ack_sent),
        last_data_recv=_age_ms(now, conn.last_data_recv),
        last_ack_recv=_age_ms(now, conn.last_ack_recv),
        pmtu=conn.pmtu,
        rcv_ssthresh=rcv.rcv_ssthresh,
        rtt=_us(srtt),
        rttvar=_us(rtt.rttvar),
        snd_ssthresh=snd_ssthresh,
        snd_cwnd=cwnd_segs,
        advmss=conn.advmss - (12 if conn.ts_ok else 0),
        reordering=conn.reordering,
        rcv_rtt=_us(rcv.rcv_rtt),
        rcv_space=rcv.rcv_space,
        total_retrans=conn.total_retrans,
        pacing_rate=pacing,
        max_pacing_rate=U64_MAX,  # no SO_MAX_PACING_RATE limit: Linux reports ~0ULL
        bytes_acked=conn.bytes_acked,
        bytes_received=rcv.bytes_received,
        segs_out=conn.segs_out,
        segs_in=conn.segs_in,
        notsent_bytes=max(conn.sndbuf.end - conn.snd_nxt, 0),
        min_rtt=_us(min_rtt) if min_rtt is not None else U32_MAX,
        data_segs_in=rcv.data_segs_in,
        data_segs_out=conn.data_segs_out,
        delivery_rate=int(rate.delivery_rate),
        busy_time=running(conn.busy_time, conn.busy_start),
        rwnd_limited=running(conn.rwnd_limited_time, conn.rwnd_limited_start),
        sndbuf_limited=running(conn.sndbuf_limited_time, conn.sndbuf_limited_start),
        delivered=conn.delivered_segs,
        delivered_ce=conn.delivered_ce,
        bytes_sent=conn.bytes_sent,
        bytes_retrans=conn.bytes_retrans,
        dsack_dups=conn.dsack_dups,
        reord_seen=conn.reord_seen,
        rcv_ooopack=rcv.ooo.ooo_packets,
        snd_wnd=conn.snd_wnd,
        rcv_wnd=rcv.window,
        rehash=0,  # no IPv6 flow-label rehashing over IPv4
        total_rto=conn.total_rto,
        total_rto_recoveries=conn.total_rto_recoveries,
        total_rto_time=min(int(conn.total_rto_time * 1000), U32_MAX),
        received_ce=conn.received_ce,
        # AccECN (RFC 9768) byte counters: this engine implements classic RFC 3168 ECN only.
        delivered_e1_bytes=0,
        delivered_e0_bytes=0,
        delivered_ce_bytes=0,
        received_e1_bytes=0,
        received_e0_bytes=0,
        received_ce_bytes=0,
        accecn_fail_mode=0,
        accecn_opt_seen=0,
        congestion=cc.name,
    )
