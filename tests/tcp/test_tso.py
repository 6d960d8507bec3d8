"""TCP segmentation offload (TSO/GSO) in the engine and coalesced receive (GRO).

With a link that cuts super-segments (``gso_max_size`` > 0) the sender builds segments of
several MSS (Linux tcp_xmit_size_goal / tcp_mss_split_point), bounded by cwnd in packets, the
peer's window and half the largest window, with Nagle and SWS judged on the tail; the
scoreboard counts packets (pcount) and splits a super-segment where a SACK, an ACK or a
retransmission cuts it. The receiver counts a coalesced segment as len/MSS segments.
"""

from __future__ import annotations

import pytest
from tcp_helpers import LOCAL, Impairments, Script, VirtualNetwork, gso_cut

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.rate import RateSampler
from tcpstack.tcp.scoreboard import Scoreboard
from tcpstack.tcp.state import CaState, TcpState
from tcpstack.wire.segment import IcmpMessage, TcpFlags

MSS = 1460
GSO = 65535
# Peer MSS 1460, no timestamps: our send MSS is the path's (1500 - 40), as TSO requires.
HANDSHAKE = """
+0  < S 0:0(0) win 65535 <mss 1460,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <...>
+.1 < . 1:1(0) ack 1 win {win}
"""


def established(win: int = 2000, *, gso: int = GSO, **options: object) -> Script:
    opts = ConnectionOptions(timestamps=False, send_buffer=1 << 20, **options)  # type: ignore[arg-type]
    s = Script(options=opts).run(HANDSHAKE.format(win=win))
    s.c.gso_max_size = gso
    s.out.clear()
    return s


def data_lengths(s: Script) -> list[int]:
    lengths = [len(e.seg.payload) for e in s.out if e.seg.payload]
    s.out.clear()
    return lengths


def ack(s: Script, upto: int, win: int = 2000, sack: str = "") -> None:
    opts = f" <nop,nop,sack {sack}>" if sack else ""
    s.line(f"+.01 < . 1:1(0) ack {upto} win {win}{opts}")


def test_initial_window_leaves_as_one_super_segment_counted_in_packets() -> None:
    s = established()
    s.line("+0 write 100000")
    assert data_lengths(s) == [10 * MSS]  # IW10: cwnd-limited, one segment of 10 packets
    c = s.c
    assert c.sb.packets_out == 10 and len(c.sb) == 1
    info = c.info(s.now)
    assert info.unacked == 10
    assert info.data_segs_out == 10 and info.segs_out == 10 + 1  # and the SYN-ACK
    assert c.cc.cwnd == 10 * MSS  # congestion control saw ten packets, not one
    # Slow start: the ACK of ten packets opens cwnd to twenty, which go as one segment.
    ack(s, 1 + 10 * MSS)
    assert c.cc.cwnd == 20 * MSS
    assert data_lengths(s) == [20 * MSS]


def test_size_goal_is_bounded_by_gso_max_size_and_half_the_window() -> None:
    # 65535 - 40 bytes of headers hold 44 full packets; cwnd allows more after two rounds.
    s = established()
    s.line("+0 write 1000000")
    data_lengths(s)
    ack(s, 1 + 10 * MSS)
    data_lengths(s)
    ack(s, 1 + 30 * MSS)
    assert data_lengths(s) == [40 * MSS]  # cwnd-limited
    ack(s, 1 + 70 * MSS)
    assert data_lengths(s) == [44 * MSS, 36 * MSS]  # 80 packets of cwnd
    # A 6000-byte gso limit: (6000 - 40) // 1460 = 4 packets per segment.
    s = established(gso=6000)
    s.line("+0 write 100000")
    assert data_lengths(s) == [4 * MSS, 4 * MSS, 2 * MSS]
    # Peer window 12000 (no scaling): half of it bounds the goal to 4 packets
    # (tcp_bound_to_half_wnd); the window itself admits 8 whole packets.
    s = Script(options=ConnectionOptions(timestamps=False, window_scaling=False,
                                         send_buffer=1 << 20)).run(
        HANDSHAKE.replace("wscale 7>", "wscale 0>").replace("win 65535", "win 12000")
        .format(win=12000))
    s.c.gso_max_size = GSO
    s.out.clear()
    s.line("+0 write 100000")
    assert data_lengths(s) == [4 * MSS, 4 * MSS]  # the 320-byte fragment waits (SWS)


def _window_limited(tso: bool) -> Script:
    opts = ConnectionOptions(timestamps=False, window_scaling=False, send_buffer=1 << 20,
                             tso=tso)
    # The peer's window (8000) ends 700 bytes into the sixth packet.
    win = 5 * MSS + 700
    s = Script(options=opts).run(
        HANDSHAKE.replace("wscale 7>", "wscale 0>").replace("win 65535", f"win {win}")
        .format(win=win))
    s.c.gso_max_size = GSO
    s.out.clear()
    s.line("+0 write 100000")
    return s


def test_window_limited_super_segment_ends_on_a_whole_packet() -> None:
    # Half the window (4000) bounds a segment to two packets; the third segment meets the
    # window's edge and is cut back to a whole packet; the 700-byte fragment is below half the
    # largest window and waits (RFC 1122 4.2.3.4 sender SWS), exactly as without TSO.
    with_tso, without = _window_limited(True), _window_limited(False)
    assert data_lengths(with_tso) == [2 * MSS, 2 * MSS, MSS]
    assert data_lengths(without) == [MSS] * 5
    assert with_tso.c.snd_nxt == without.c.snd_nxt
    assert with_tso.c.sb.packets_out == without.c.sb.packets_out == 5


def test_nagle_holds_the_small_tail_of_a_super_segment() -> None:
    s = established()
    s.line("+0 write 100")  # a small segment, unacknowledged: Minshall's Nagle arms
    assert data_lengths(s) == [100]
    s.line(f"+0 write {4 * MSS + 500}")
    # The whole packets go in one segment; the 500-byte tail waits for the ACK of the 100.
    assert data_lengths(s) == [4 * MSS]
    ack(s, 101)
    assert data_lengths(s) == [500]


def test_tail_below_mss_rides_in_the_super_segment_when_nagle_allows() -> None:
    s = established()
    s.line(f"+0 write {4 * MSS + 500}")
    out = [e.seg for e in s.out if e.seg.payload]
    assert [len(seg.payload) for seg in out] == [4 * MSS + 500]
    assert out[0].flags & TcpFlags.PSH
    assert s.c.sb.packets_out == 5
    # The segment ends with a small packet: a later small write is held by Nagle.
    s.out.clear()
    s.line("+0 write 10")
    assert data_lengths(s) == []
    # With TCP_NODELAY the same tail is sent at once.
    s = established(nodelay=True)
    s.line("+0 write 100")
    s.line(f"+0 write {4 * MSS + 500}")
    assert data_lengths(s) == [100, 4 * MSS + 500]


def test_tso_off_sends_one_mss_per_segment() -> None:
    s = established(tso=False)
    s.line("+0 write 100000")
    assert data_lengths(s) == [MSS] * 10
    assert s.c.sb.packets_out == 10 == len(s.c.sb)


def test_no_tso_when_the_mss_is_not_the_paths() -> None:
    # The peer's MSS (1000) is below what the MTU gives: a device cutting at MTU - headers
    # would produce pieces the peer never agreed to, so segments stay one MSS each.
    opts = ConnectionOptions(timestamps=False, send_buffer=1 << 20)
    s = Script(options=opts).run(HANDSHAKE.replace("mss 1460", "mss 1000").format(win=2000))
    s.c.gso_max_size = GSO
    s.out.clear()
    s.line("+0 write 100000")
    assert data_lengths(s) == [1000] * 10


def test_partial_sack_splits_the_super_segment_and_only_the_hole_is_retransmitted() -> None:
    s = established()
    s.line("+0 write 100000")
    assert data_lengths(s) == [10 * MSS]
    c = s.c
    # Packets 3..10 arrive, 1 and 2 are lost: the SACK cuts the record in two.
    ack(s, 1, sack=f"{1 + 2 * MSS}:{1 + 10 * MSS}")
    base = c.iss + 1
    recs = [(r.start - base, r.end - base, r.pcount, r.sacked, r.lost)
            for r in c.sb if r.start < base + 10 * MSS]
    # The hole is lost (its first packet, being retransmitted, split off); the SACKed part
    # is one record of eight packets.
    assert recs[-1] == (2 * MSS, 10 * MSS, 8, True, False)
    assert all(lost and not sacked for _, _, _, sacked, lost in recs[:-1])
    assert sum(p for _, _, p, _, _ in recs[:-1]) == 2 and recs[-2][1] == 2 * MSS
    assert c.sb.sacked_segments == 8
    # RACK: packets sent with the SACKed ones and ending before them are lost.
    assert c.ca_state == CaState.RECOVERY
    assert c.sb.lost_segments == 2
    info = c.info(s.now)
    assert (info.sacked, info.lost) == (8, 2)
    sent = [((e.seg.seq - c.iss - 1) & 0xFFFFFFFF, len(e.seg.payload)) for e in s.out
            if e.seg.payload]
    s.out.clear()
    # Exactly the hole goes again, one MSS at a time; PRR lets new data follow as one segment
    # (cwnd 7 packets: 2 retransmitted + 5 new), the same packets as without TSO.
    assert sent == [(0, MSS), (MSS, MSS), (10 * MSS, 5 * MSS)]
    assert c.bytes_retrans == 2 * MSS and c.total_retrans == 2
    assert c.cc.cwnd == 7 * MSS
    # The cumulative ACK of the repaired hole ends recovery.
    ack(s, 1 + 10 * MSS)
    assert c.ca_state == CaState.OPEN and c.sb.packets_out > 0


def test_partial_ack_of_a_super_segment_trims_it() -> None:
    s = established()
    s.line("+0 write 100000")
    data_lengths(s)
    c = s.c
    ack(s, 1 + 3 * MSS + 100)  # an ACK inside the fourth packet
    first = c.sb.first()
    assert first is not None
    assert first.start == c.iss + 1 + 3 * MSS + 100
    # The rest of the fourth packet is still one packet; six whole ones follow.
    assert first.end == c.iss + 1 + 10 * MSS and first.pcount == 7
    assert c.sb.bytes_outstanding == c.snd_nxt - c.snd_una
    assert c.sb.packets_out == sum(r.pcount for r in c.sb)


def test_receiver_counts_a_coalesced_segment_as_its_packets_and_acks_at_once() -> None:
    s = established(win=2000)
    c = s.c
    seq = 1
    for _ in range(16):  # leave quick-ACK mode with single packets
        s.line(f"+.001 < . {seq}:{seq + MSS}({MSS}) ack 1 win 2000")
        c.receive(1 << 20)
        seq += MSS
    s.out.clear()
    segs_in, data_in = c.segs_in, c.rcv.data_segs_in
    s.line(f"+.001 < . {seq}:{seq + MSS}({MSS}) ack 1 win 2000")
    assert not s.out  # one packet: the ACK is delayed
    seq += MSS
    s.line(f"+.001 < . {seq}:{seq + 8 * MSS}({8 * MSS}) ack 1 win 2000")  # GRO: 8 packets
    seq += 8 * MSS
    assert [e.seg.ack for e in s.out] == [(s.irs + seq) & 0xFFFFFFFF]  # ACKed at once
    assert c.segs_in - segs_in == 1 + 8
    assert c.rcv.data_segs_in - data_in == 1 + 8
    assert c.info(s.now).rcv_mss == MSS


def test_gso_cut_pieces_fit_the_mtu_and_keep_flags_on_the_right_piece() -> None:
    s = established()
    s.c.send(bytes(3 * MSS + 10))
    s.c.shutdown_write()
    segs = [seg for seg in s.c.poll_transmit(s.now) if seg.payload]
    assert len(segs) == 1 and segs[0].flags & TcpFlags.FIN
    pieces = gso_cut(segs[0], 1500)
    assert [len(p.payload) for p in pieces] == [MSS, MSS, MSS, 10]
    assert [bool(p.flags & TcpFlags.FIN) for p in pieces] == [False, False, False, True]


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_bulk_transfer_with_tso_matches_the_bytes(loss: float) -> None:
    opts = ConnectionOptions(send_buffer=1 << 20, receive_buffer=1 << 20)
    net = VirtualNetwork(seed=3, impairments=Impairments(loss=loss, delay=0.005),
                         client_options=opts, server_options=opts, gso_max_size=GSO)
    data = bytes(range(256)) * 2000
    sent = 0
    got = bytearray()
    for _ in range(200_000):
        if not net.step():
            break
        sent = net.pump(net.client, data, sent)
        if sent == len(data) and net.client.state is TcpState.ESTABLISHED:
            net.client.shutdown_write()
        if net.server is not None:
            got += net.server.receive(1 << 20)
            if net.server.state is TcpState.CLOSE_WAIT:
                net.server.shutdown_write()
    assert bytes(got) == data
    client = net.client
    assert net.super_segments > 0
    # Every packet the device sent is counted once in segs_out.
    assert client.data_segs_out >= -(-len(data) // client.mss_cache)
    if loss:
        assert client.total_retrans > 0


def test_pcount_of_records_and_pmtu_loss_by_packet_size() -> None:
    sb, rate = Scoreboard(), RateSampler()
    sb.on_sent(1000, 1000 + 10 * MSS, 0.0, retransmit=False, rate=rate, gso_size=MSS)
    sb.on_sent(1000 + 10 * MSS, 1000 + 13 * MSS + 1, 0.0, retransmit=False, rate=rate,
               fin=True, gso_size=MSS)  # three packets, the FIN rides on the last
    sb.on_sent(1000 + 13 * MSS + 1, 1000 + 13 * MSS + 501, 0.0, retransmit=False, rate=rate)
    assert [r.pcount for r in sb] == [10, 3, 1]
    assert sb.packets_out == 14
    # The path MTU falls below 1460-byte packets (Linux tcp_simple_retransmit judges a TSO
    # record by its gso_size): both super-segments are lost, the 500-byte one passed.
    assert sb.mark_oversized_lost(1400) == 13
    assert sb.lost_segments == 13 and sb.lost_bytes == 13 * MSS + 1
    # A retransmission of one MSS splits the lost record: one packet in flight again.
    sb.on_sent(1000, 1000 + MSS, 0.1, retransmit=True, rate=rate)
    assert [r.pcount for r in sb][:2] == [1, 9]
    assert sb.retrans_out == 1 and sb.lost_segments == 13 and sb.packets_out == 14


def test_path_mtu_drop_ends_tso_and_resends_the_super_segment_in_new_mss_pieces() -> None:
    s = established()
    s.line("+0 write 100000")
    assert data_lengths(s) == [10 * MSS]
    c = s.c
    # The device cuts at the interface MTU, which no longer reaches the peer: every packet of
    # the super-segment was too big and TSO must stop until the path MTU is the interface's.
    c.on_icmp(IcmpMessage("198.18.0.254", LOCAL[0], 3, 4, next_hop_mtu=1000), s.now)
    assert c.mss_cache == 960 and c.sb.lost_segments == 10
    out = [seg for seg in c.poll_transmit(s.now) if seg.payload]
    assert out and all(len(seg.payload) <= 960 for seg in out)
    assert (out[0].seq - c.iss - 1) & 0xFFFFFFFF == 0
    ack(s, 1 + 10 * MSS)  # the resent flight is acknowledged: new data, one MSS each
    new_data = [len(e.seg.payload) for e in s.out if e.seg.payload]
    assert new_data and all(n <= 960 for n in new_data)
