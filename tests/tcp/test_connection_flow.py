"""Receiver (delayed ACK, quick-ACK, SWS, never-shrinking window, bounded reassembly), sender
(Nagle, SWS, persist, keep-alive, MSS from PMTU), window scaling and ECN."""

from __future__ import annotations

import pytest
from tcp_helpers import Script

from tcpstack.tcp.config import ConnectionOptions, KeepaliveOptions
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.events import KeepaliveTimeout, RecoveryEntered, ZeroWindowCleared, ZeroWindowSeen
from tcpstack.tcp.state import CaState, TcpState
from tcpstack.wire.segment import IcmpMessage

PASSIVE = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>
+.1 < . 1:1(0) ack 1 win 512
"""


def test_quickack_then_delayed_ack_every_second_segment_and_40ms_timer() -> None:
    # Linux tcp_incr_quickack: quickacks = rcv_wnd / (2 * rcv_mss) = 18980 // 2000 = 9.
    s = Script(options=ConnectionOptions(receive_buffer=20000)).run(
        PASSIVE.replace("wscale 7>\n+.1", "wscale 0>\n+.1"))
    seq = 1
    for _ in range(9):  # quick-ACK mode: every segment is ACKed at once
        s.line(f"+.001 < . {seq}:{seq + 1000}(1000) ack 1 win 512")
        s.line(f"+0 > . 1:1(0) ack {seq + 1000}")
        s.c.receive(1000)
        seq += 1000
    s.run(f"""
    +.001 < . {seq}:{seq + 1000}(1000) ack 1 win 512
    +0    none
    +.001 < . {seq + 1000}:{seq + 2000}(1000) ack 1 win 512
    +0    > . 1:1(0) ack {seq + 2000}
    +.001 < . {seq + 2000}:{seq + 2500}(500) ack 1 win 512
    +.04  > . 1:1(0) ack {seq + 2500}
    """)


def test_out_of_order_and_hole_filling_are_acked_at_once() -> None:
    s = Script().run(PASSIVE)
    for i in range(16):  # leave quick-ACK mode
        s.line(f"+.001 < . {1 + i * 1000}:{1001 + i * 1000}(1000) ack 1 win 512")
        s.c.receive(1 << 20)
    s.out.clear()
    s.run("""
    +.1 < . 18001:19001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 16001 <nop,nop,sack 18001:19001>
    +0  < . 16001:17001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 17001 <nop,nop,sack 18001:19001>
    +0  < . 17001:18001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 19001
    """)


def test_window_never_shrinks_and_receiver_sws_avoidance() -> None:
    # 8000-byte buffer, no window scaling: the window field is exact. Linux rounds the first
    # window down to whole MSS (5 * 1460).
    opts = ConnectionOptions(receive_buffer=8000, window_scaling=False)
    s = Script(options=opts).run("""
    +0  < S 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 win 7300 <mss 1460>
    +.1 < . 1:1(0) ack 1 win 65535
    """)
    seq = 1
    for n in (1000,) * 7 + (300,):
        s.line(f"+.001 < . {seq}:{seq + n}({n}) ack 1 win 65535")
        seq += n
    s.advance(s.now + 0.5)
    c = s.c
    last = s.out[-1].seg
    assert last.ack == (s.irs + 7301) & 0xFFFFFFFF
    # 700 bytes are free, but less than min(buffer/2, MSS): RFC 1122 receiver SWS avoidance
    # offers a zero window rather than a silly one.
    assert last.window == 0
    s.out.clear()
    s.run("""
    +0 read 100
    +0 none
    +0 read 4000
    +0 > . 1:1(0) ack 7301 win 4800
    """)  # 4800 bytes free after the second read: worth a window update
    # The advertised right edge is never pulled back, whatever happens to the buffer.
    edge = c.rcv.rcv_adv
    c.rcv.capacity = 100
    c.rcv.select_window()
    assert c.rcv.rcv_adv == edge


def test_zero_window_persist_probes_with_backoff() -> None:
    # slow_start/slow-start-after-win-update.pkt's probe timing: RTO 300 ms doubling.
    s = Script().run(PASSIVE + """
    +0  write 2000
    +0  > P. 1:2001(2000) ack 1
    +.1 < . 1:1(0) ack 2001 win 0
    +0  write 2000
    +.3 > . 2000:2000(0) ack 1
    +.6 > . 2000:2000(0) ack 1
    +1.2 > . 2000:2000(0) ack 1
    +.1 < . 1:1(0) ack 2001 win 512
    +0  > P. 2001:4001(2000) ack 1
    """)
    ev = s.c.drain_events()
    assert any(isinstance(e, ZeroWindowSeen) for e in ev)
    assert any(isinstance(e, ZeroWindowCleared) for e in ev)


def test_persist_probes_answered_keep_connection_open() -> None:
    s = Script().run(PASSIVE + """
    +0  write 1000
    +0  > P. 1:1001(1000) ack 1
    +.1 < . 1:1(0) ack 1001 win 0
    +0  write 1000
    """)
    for _ in range(20):
        s.advance(s.c.next_deadline())  # type: ignore[arg-type]
        s.line("+0 < . 1:1(0) ack 1001 win 0")
    assert s.c.state is TcpState.ESTABLISHED
    assert s.c.info(s.now).backoff > 5


def test_nagle_holds_small_segment_until_ack() -> None:
    Script().run(PASSIVE + """
    +0  write 100
    +0  > P. 1:101(100) ack 1
    +0  write 100
    +0  none
    +.05 write 100
    +0  none
    +.05 < . 1:1(0) ack 101 win 512
    +0  > P. 101:301(200) ack 1
    """)


def test_nodelay_sends_small_segments_at_once() -> None:
    Script(options=ConnectionOptions(nodelay=True)).run(PASSIVE + """
    +0  write 100
    +0  > P. 1:101(100) ack 1
    +0  write 100
    +0  > P. 101:201(100) ack 1
    """)


def test_sender_sws_avoidance_waits_for_useful_window() -> None:
    # Peer's window 1100 bytes (largest seen 64 KiB): 100 bytes left after a full segment is
    # less than half the max window, so the tail waits.
    s = Script(options=ConnectionOptions(nodelay=True)).run("""
    +0  < S 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    +.1 < . 1:1(0) ack 1 win 1100
    +0  write 3000
    +0  > . 1:1001(1000) ack 1
    +0  none
    +.1 < . 1:1(0) ack 1001 win 3000
    +0  > P. 1001:3001(2000) ack 1
    """)
    assert s.c.snd_una == s.c.iss + 1001


def test_keepalive_probes_then_abort() -> None:
    ka = KeepaliveOptions(enabled=True, idle=10.0, interval=2.0, count=3)
    s = Script(options=ConnectionOptions(keepalive=ka)).run(PASSIVE + """
    +10 > . 0:0(0) ack 1
    +.1 < . 1:1(0) ack 1 win 512
    +10 > . 0:0(0) ack 1
    +2  > . 0:0(0) ack 1
    +2  > . 0:0(0) ack 1
    +2  > R. 1:1(0) ack 1
    """)
    assert s.c.state is TcpState.CLOSED and s.c.error == "connection timed out"
    ev = [e for e in s.c.drain_events() if isinstance(e, KeepaliveTimeout)]
    assert ev and ev[0].probes == 3


def test_mss_follows_path_mtu() -> None:
    s = Script().run(PASSIVE)
    c = s.c
    assert c.mss_cache == 1000
    c.on_icmp(IcmpMessage("198.18.0.254", "192.168.0.1", 3, 4, next_hop_mtu=576), s.now)
    assert c.mss_cache == 536 and c.info(s.now).pmtu == 576
    s.run("""
    +0 write 1072
    +0 > . 1:537(536) ack 1
    +0 > P. 537:1073(536) ack 1
    """)


def test_pmtu_drop_resends_in_flight_data_at_the_new_mss() -> None:
    # Linux tcp_simple_retransmit: the 1000-byte segments in flight cannot cross a 576-byte
    # link; they go again at once, cut to 536 bytes, without a congestion response.
    s = Script().run(PASSIVE + """
    +0  write 2000
    +0  > P. 1:2001(2000) ack 1
    """)
    c = s.c
    cwnd, ssthresh = c.cc.cwnd, c.cc.ssthresh
    s.advance(s.now + 0.01)
    c.on_icmp(IcmpMessage("198.18.0.254", "192.168.0.1", 3, 4, next_hop_mtu=576), s.now)
    s._poll()  # the stack polls after every input
    s.run("""
    +0   > . 1:537(536) ack 1
    +0   > . 537:1001(464) ack 1
    +0   > . 1001:1537(536) ack 1
    +0   > P. 1537:2001(464) ack 1
    """)
    assert c.ca_state is CaState.LOSS and c.cc.ssthresh == ssthresh
    assert c.cc.cwnd == cwnd * 536 // 1000  # the same number of segments
    s.run("+.1 < . 1:1(0) ack 2001 win 512")
    info = c.info(s.now)
    assert c.ca_state is CaState.OPEN and info.total_rto == 0 and info.total_rto_time == 0


@pytest.mark.parametrize(
    ("buffer", "scale"),
    [(None, 7), (65535, 0), (65536, 1), (6 * 1024 * 1024, 7), (15 * 1024 * 1024, 8), (1 << 30, 14)],
)
def test_window_scale_sized_to_receive_buffer(buffer: int | None, scale: int) -> None:
    c = Connection(("198.18.0.1", 1), ("198.18.0.2", 2), iss=1,
                   options=ConnectionOptions(receive_buffer=buffer))
    c.open_active(0.0)
    syn = c.poll_transmit(0.0)[0]
    assert syn.options.wscale == scale


@pytest.mark.parametrize(("profile", "rmem_max", "scale"),
                         [("linux", None, 7), ("freebsd", None, 6), ("linux", 15 << 20, 8),
                          ("linux", 0, 2)])
def test_window_scale_follows_the_profiles_receive_buffer_max(
    profile: str, rmem_max: int | None, scale: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux sizes the scale for tcp_rmem[2] (6 MiB), FreeBSD for kern.ipc.maxsockbuf (2 MiB);
    # a profile with another maximum (defaults.sh's 15 MiB) or none (the 131072 B buffer) too.
    import attrs  # noqa: PLC0415

    from tcpstack.tcp import config  # noqa: PLC0415

    if rmem_max is not None:
        monkeypatch.setitem(config.PROFILES, profile,
                            attrs.evolve(config.PROFILES[profile], receive_buffer_max=rmem_max))
    c = Connection(("198.18.0.1", 1), ("198.18.0.2", 2), iss=1,
                   options=ConnectionOptions(profile=profile))
    c.open_active(0.0)
    assert c.poll_transmit(0.0)[0].options.wscale == scale


def test_window_scaling_applies_to_both_directions() -> None:
    s = Script(options=ConnectionOptions(receive_buffer=1 << 20)).run("""
    +0  < S 0:0(0) win 65535 <mss 1000,nop,wscale 3>
    +0  > S. 0:0(0) ack 1 win 64240 <mss 1460,nop,wscale 5>
    +.1 < . 1:1(0) ack 1 win 100
    """)
    assert s.c.snd_wnd == 800  # 100 << 3
    s.run("""
    +0 < . 1:1001(1000) ack 1 win 100
    +0 > . 1:1(0) ack 1001 win 2070
    """)


def test_ecn_negotiation_marking_and_response() -> None:
    s = Script(options=ConnectionOptions(ecn=True)).run("""
    +0  < SEW 0:0(0) win 65535 <mss 1000,nop,wscale 7>
    +0  > SE. 0:0(0) ack 1 <mss 1460,nop,wscale 7>
    +.1 < . 1:1(0) ack 1 win 512
    +0  write 3000
    +0  > P. 1:3001(3000) ack 1 [ect0]
    +.1 < . 1:1001(1000) ack 1001 win 512 [ce]
    +0  > E. 3001:3001(0) ack 1001 [noecn]
    +0  < E. 1001:1001(0) ack 2001 win 512
    """)
    c = s.c
    assert c.ecn_ok and c.ca_state is CaState.CWR
    assert any(isinstance(e, RecoveryEntered) and e.reason == "ecn" for e in c.drain_events())
    info = c.info(s.now)
    assert info.received_ce == 1 and info.options & 8 and info.options & 16
    # CWR on the next new data; our ECE echo continues until the peer's CWR arrives.
    s.run("""
    +0  write 1000
    +0  > PEW. 3001:4001(1000) ack 1001 [ect0]
    +.1 < E. 1001:1001(0) ack 4001 win 512
    +0  < W. 1001:1101(100) ack 4001 win 512
    +0  > . 4001:4001(0) ack 1101
    """)
    assert c.ca_state is CaState.OPEN


def test_ecn_off_by_default_ignores_setup() -> None:
    Script().run("""
    +0  < SEW 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    """)


def test_reassembly_is_bounded_in_ranges() -> None:
    s = Script(options=ConnectionOptions(max_ooo_ranges=4)).run(PASSIVE)
    for i in range(10):
        s.line(f"+.001 < . {2001 + i * 2000}:{2101 + i * 2000}(100) ack 1 win 512")
    c = s.c
    assert len(c.rcv.ooo.ranges) == 4
    assert c.rcv.ooo.dropped_bytes > 0
    # The lowest ranges are kept, so the stream still completes.
    s.line("+0 < . 1:2001(2000) ack 1 win 512")
    assert c.rcv.rcv_nxt == s.irs + 2101


def test_events_are_bounded_and_drops_counted() -> None:
    s = Script().run(PASSIVE)
    c = s.c
    for i in range(5000):
        s.line(f"+.6 < R. {1000 + i}:{1000 + i}(0) ack 1 win 0")
    assert len(c.events) == 4096
    assert c.events_dropped > 0
    assert len(c.drain_events()) == 4096 and not c.events


def test_send_is_bounded_by_send_buffer() -> None:
    s = Script(options=ConnectionOptions(send_buffer=5000)).run(PASSIVE)
    c = s.c
    assert c.send(bytes(8000)) == 5000
    assert c.send_space == 0 and c.send(b"x") == 0


def test_cwnd_restarts_after_idle_when_new_data_is_queued() -> None:
    # RFC 5681 4.1 / Linux tcp_slow_start_after_idle (profile cwnd_validation): cwnd grew to 20;
    # after an idle period longer than the RTO, newly written data goes out under IW10 again.
    s = Script(options=ConnectionOptions(send_buffer=1 << 20)).run(PASSIVE + """
    +0  write 10000
    +0  > P. 1:10001(10000) ack 1
    +.1 < . 1:1(0) ack 10001 win 512
    """)
    assert s.c.cc.cwnd == 20 * 1000
    s.run("""
    +1  write 30000
    +0  > P. 10001:20001(10000) ack 1
    +0  none
    """)
    assert s.c.cc.cwnd == 10 * 1000
