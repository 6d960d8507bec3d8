"""TCPInfo: every field is driven to a non-trivial value by real engine activity."""

from __future__ import annotations

import random

import attrs
from tcp_helpers import Impairments, Script, VirtualNetwork

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import TcpState

# Fields that are zero by design here, each for a stated reason.
ZERO_BY_DESIGN = {
    "fastopen_client_fail": "no TCP Fast Open",
    "fackets": "Linux removed FACK accounting; always 0 since 4.18",
    "rehash": "no IPv6 flow-label rehash over IPv4",
    "delivered_e1_bytes": "AccECN (RFC 9768) not implemented, classic ECN only",
    "delivered_e0_bytes": "AccECN",
    "delivered_ce_bytes": "AccECN",
    "received_e1_bytes": "AccECN",
    "received_e0_bytes": "AccECN",
    "received_ce_bytes": "AccECN",
    "accecn_fail_mode": "AccECN",
    "accecn_opt_seen": "AccECN",
}


def test_every_tcp_info_field_reaches_a_real_value() -> None:
    opts = ConnectionOptions(ecn=True, send_buffer=64 * 1024, receive_buffer=96 * 1024)
    net = VirtualNetwork(
        seed=11,
        # The outage makes RTOs certain: RACK-TLP repairs random loss without them.
        impairments=Impairments(loss=0.04, duplicate=0.02, reorder=0.1, delay=0.02,
                                jitter=0.005, ce=0.02, outages=((0.3, 0.8),)),
        client_options=opts, server_options=opts,
    )
    rng = random.Random(3)
    up = rng.randbytes(300_000)
    down = rng.randbytes(150_000)
    off = down_off = 0
    seen: dict[str, object] = {}
    fields = [f.name for f in attrs.fields(TCPInfo)]
    for step in range(200_000):
        if not net.step():
            break
        c, s = net.client, net.server
        off = net.pump(c, up, off)
        if off == len(up) and c.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            c.shutdown_write()
        if net.now > 6.0:
            c.receive(1 << 20)
        if s is not None:
            # Both applications read late: windows close, zero-window probes go out.
            if net.now > 3.0:
                s.receive(1 << 20)
            if net.now > 2.0 and s.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                down_off = net.pump(s, down, down_off)
                if down_off == len(down):
                    s.shutdown_write()
        for conn in net.conns() if step % 7 == 0 else ():
            info = conn.info(net.now)
            for name in fields:
                v = getattr(info, name)
                if v and not seen.get(name):
                    seen[name] = v
        if all(c.state in (TcpState.CLOSED, TcpState.TIME_WAIT) for c in net.conns()):
            break
    missing = [n for n in fields if n not in seen and n not in ZERO_BY_DESIGN]
    assert missing == []
    for name in ZERO_BY_DESIGN:
        assert name not in seen


def test_info_fields_in_linux_units() -> None:
    s = Script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <...>
    +.1 < . 1:1(0) ack 1 win 512
    +.2 < . 1:1001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 1001
    +0  write 3000
    +0  > P. 1:3001(3000) ack 1001
    """)
    info = s.c.info(s.now + 0.05)
    assert info.state == 1 and info.rtt == 100_000 and info.rttvar == 50_000
    assert info.rto == 300_000 and info.min_rtt == 100_000
    assert info.snd_cwnd == 10 and info.snd_ssthresh == 0x7FFFFFFF
    assert info.unacked == 3 and info.notsent_bytes == 0 and info.bytes_sent == 3000
    assert info.last_data_sent == 50 and info.last_data_recv == 50
    assert info.last_ack_recv == 50  # the data segment carried an ACK too
    assert info.snd_wnd == 512 << 7 and info.snd_wscale == 7 and info.rcv_wscale == 7
    assert info.options == 2 | 4  # SACK, WSCALE
    assert info.bytes_received == 1000 and info.data_segs_in == 1 and info.data_segs_out == 3
    assert info.congestion == "cubic"
    assert len(info.pack()) == TCPInfo.SIZE
