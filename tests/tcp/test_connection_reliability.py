"""Retransmission timer (RFC 6298), SYN retries, user timeout, Karn, SACK / D-SACK generation
(RFC 2018 / 2883), NewReno partial ACKs (RFC 6582), RTO recovery, PAWS (RFC 7323)."""

from __future__ import annotations

from tcp_helpers import Script

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.events import (
    LossDetected,
    RecoveryEntered,
    RecoveryExited,
    RetransmitKind,
    RtoFired,
    SegmentRetransmitted,
    UserTimeout,
)
from tcpstack.tcp.state import CaState, TcpState
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment, Timestamps

PASSIVE = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>
+.1 < . 1:1(0) ack 1 win 512
"""
PASSIVE_NOSACK = """
+0  < S 0:0(0) win 65535 <mss 1000,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 7>
+.1 < . 1:1(0) ack 1 win 512
"""


def test_rto_from_handshake_rtt_with_exponential_backoff() -> None:
    # Without SACK there is no tail loss probe (see test_rack_tlp.py), so the RTO fires.
    # SYN-ACK RTT 100 ms -> Linux RTO = srtt + max(4*rttvar, 200 ms) = 300 ms; then doubling.
    s = Script().run(PASSIVE_NOSACK + """
    +.1 write 1000
    +0  > P. 1:1001(1000) ack 1
    +.3 > P. 1:1001(1000) ack 1
    +.6 > P. 1:1001(1000) ack 1
    +1.2 > P. 1:1001(1000) ack 1
    """)
    fired = [e for e in s.c.drain_events() if isinstance(e, RtoFired)]
    assert [e.backoff for e in fired] == [1, 2, 3]
    assert [round(e.rto, 3) for e in fired] == [0.6, 1.2, 2.4]
    info = s.c.info(s.now)
    assert info.backoff == 3 and info.retransmits == 3 and info.total_rto == 3
    assert info.ca_state == CaState.LOSS and info.snd_cwnd == 1
    # An ACK ends RTO recovery (and the RTO episode's time is accounted).
    s.run("+.1 < . 1:1(0) ack 1001 win 512")
    info = s.c.info(s.now)
    assert info.ca_state == CaState.OPEN and info.total_rto_recoveries == 1
    assert info.total_rto_time == 1900  # ms from the first RTO (0.5 s) to the ACK (2.4 s)


def test_min_rto_is_200ms_for_linux() -> None:
    s = Script().run("""
    +0    < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0    > S. 0:0(0) ack 1 <...>
    +.001 < . 1:1(0) ack 1 win 512
    +.1   write 1000
    +0    > P. 1:1001(1000) ack 1
    +.201 > P. 1:1001(1000) ack 1
    """)
    assert abs(s.c.rtt.srtt - 0.001) < 1e-9  # type: ignore[operator]


def test_rto_is_capped_at_120s() -> None:
    s = Script().run(PASSIVE_NOSACK + "+.1 write 100\n+0 > P. 1:101(100) ack 1")
    gaps = []
    last = s.now
    for _ in range(11):
        s.advance(s.c.next_deadline())  # type: ignore[arg-type]
        gaps.append(round(s.now - last, 3))
        last = s.now
    assert gaps[:3] == [0.3, 0.6, 1.2]
    assert max(gaps) == 120.0 and gaps[-1] == 120.0


def test_syn_retries_with_backoff_then_timeout() -> None:
    s = Script(options=ConnectionOptions(syn_retries=3)).run("""
    +0 connect
    +0 > S 0:0(0) <...>
    +1 > S 0:0(0) <...>
    +2 > S 0:0(0) <...>
    +4 > S 0:0(0) <...>
    """)
    s.advance(14.99)
    assert s.c.state is TcpState.SYN_SENT
    s.advance(15.0)
    assert s.c.state is TcpState.CLOSED and s.c.error == "connection timed out"
    assert isinstance(s.c.error_exception(), TimeoutError)


def test_lost_syn_gives_initial_window_of_one_segment() -> None:
    # RFC 5681 3.1: after a SYN retransmission the initial window is one segment.
    s = Script().run("""
    +0 connect
    +0 > S 0:0(0) <...>
    +1 > S 0:0(0) <...>
    +.1 < S. 0:0(0) ack 1 win 65535 <mss 1000,nop,wscale 7>
    +0 > . 1:1(0) ack 1
    +0 write 5000
    +0 > . 1:1001(1000) ack 1
    +0 none
    """)
    assert s.c.info(s.now).snd_cwnd == 1


def test_synack_retransmission() -> None:
    Script().run("""
    +0 < S 0:0(0) win 65535 <mss 1000>
    +0 > S. 0:0(0) ack 1 <mss 1460>
    +1 > S. 0:0(0) ack 1 <mss 1460>
    +2 > S. 0:0(0) ack 1 <mss 1460>
    """)


def test_user_timeout_aborts_unacknowledged_data() -> None:
    s = Script(options=ConnectionOptions(user_timeout=2.0)).run(PASSIVE_NOSACK + """
    +.1 write 100
    +0  > P. 1:101(100) ack 1
    +.3 > P. 1:101(100) ack 1
    +.6 > P. 1:101(100) ack 1
    """)
    s.advance(2.19)
    assert s.c.state is TcpState.ESTABLISHED
    s.advance(2.2)  # 2 s after the data was first sent
    assert s.c.state is TcpState.CLOSED and s.c.error == "user timeout"
    assert any(isinstance(e, UserTimeout) for e in s.c.drain_events())


def test_data_retries_limit_aborts() -> None:
    s = Script(options=ConnectionOptions(profile="freebsd")).run("""
    +0 < S 0:0(0) win 65535 <mss 1000>
    +0 > S. 0:0(0) ack 1 <...>
    +.1 < . 1:1(0) ack 1 win 65535
    +0 write 10
    +0 > P. 1:11(10) ack 1
    """)
    for _ in range(12):
        s.advance(s.c.next_deadline())  # type: ignore[arg-type]
    assert s.c.state is TcpState.ESTABLISHED
    s.advance(s.c.next_deadline())  # type: ignore[arg-type]
    assert s.c.state is TcpState.CLOSED and s.c.error == "connection timed out"


def test_karn_no_rtt_sample_from_retransmitted_segment() -> None:
    s = Script().run(PASSIVE + """
    +.1 write 1000
    +0  > P. 1:1001(1000) ack 1
    +.3 > P. 1:1001(1000) ack 1
    +.05 < . 1:1(0) ack 1001 win 512
    """)
    assert s.c.rtt.samples == 1  # only the SYN-ACK's
    assert abs(s.c.rtt.srtt - 0.1) < 1e-9  # type: ignore[operator]


def test_receiver_sack_blocks_most_recent_first_and_dsack() -> None:
    s = Script().run(PASSIVE + """
    +.1 < . 1001:2001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 1 <nop,nop,sack 1001:2001>
    +0  < . 3001:4001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 1 <nop,nop,sack 3001:4001 1001:2001>
    +0  < . 5001:6001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 1 <nop,nop,sack 5001:6001 3001:4001 1001:2001>
    +0  < . 2001:3001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 1 <nop,nop,sack 1001:4001 5001:6001>
    +0  < . 1:1001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 4001 <nop,nop,sack 5001:6001>
    +0  < . 1:1001(1000) ack 1 win 512
    +0  > . 1:1(0) ack 4001 <nop,nop,sack 1:1001 5001:6001>
    """)
    info = s.c.info(s.now)
    assert info.rcv_ooopack == 4  # 1001, 3001, 5001 and 2001 arrived above rcv_nxt


def test_newreno_partial_ack_retransmits_next_hole() -> None:
    # Segments 1 and 3 lost, no SACK: fast retransmit of 1, then the partial ACK for 2
    # retransmits 3 at once (RFC 6582 3.2 step 4).
    s = Script().run(PASSIVE_NOSACK + """
    +.1 write 6000
    +0  > P. 1:6001(6000) ack 1
    +.1 < . 1:1(0) ack 1 win 512
    +0  < . 1:1(0) ack 1 win 512
    +0  < . 1:1(0) ack 1 win 512
    +0  > . 1:1001(1000) ack 1
    +.1 < . 1:1(0) ack 2001 win 512
    +0  > . 2001:3001(1000) ack 1
    +.1 < . 1:1(0) ack 6001 win 512
    """)
    ev = s.c.drain_events()
    kinds = [e.kind for e in ev if isinstance(e, SegmentRetransmitted)]
    assert kinds == [RetransmitKind.FAST, RetransmitKind.FAST]
    entered = [e for e in ev if isinstance(e, RecoveryEntered)]
    assert len(entered) == 1 and entered[0].reason == "dupacks"
    assert any(isinstance(e, RecoveryExited) for e in ev)
    assert s.c.ca_state is CaState.OPEN


def test_sack_recovery_retransmits_every_hole_and_reports_burst_loss() -> None:
    s = Script().run(PASSIVE + """
    +.1 write 8000
    +0  > P. 1:8001(8000) ack 1
    +.1 < . 1:1(0) ack 1 win 512 <sack 2001:3001,nop,nop>
    +0  < . 1:1(0) ack 1 win 512 <sack 2001:4001,nop,nop>
    +0  < . 1:1(0) ack 1 win 512 <sack 2001:5001,nop,nop>
    +0  > . 1:1001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 512 <sack 2001:6001,nop,nop>
    +0  > . 1001:2001(1000) ack 1
    +.1 < . 1:1(0) ack 8001 win 512
    """)
    ev = s.c.drain_events()
    lost = [e for e in ev if isinstance(e, LossDetected)]
    assert lost and lost[0].segments == 2 and lost[0].burst
    kinds = {e.kind for e in ev if isinstance(e, SegmentRetransmitted)}
    assert kinds == {RetransmitKind.SACK_RECOVERY}
    info = s.c.info(s.now)
    assert info.total_retrans == 2 and info.bytes_retrans == 2000


def test_dsack_from_peer_counts_dsack_dups() -> None:
    s = Script().run(PASSIVE + """
    +.1 write 1000
    +0  > P. 1:1001(1000) ack 1
    +.3 > P. 1:1001(1000) ack 1
    +.05 < . 1:1(0) ack 1001 win 512
    +.05 < . 1:1(0) ack 1001 win 512 <sack 1:1001,nop,nop>
    """)
    assert s.c.info(s.now).dsack_dups == 1


def test_rto_retransmits_in_order_after_timeout() -> None:
    s = Script().run(PASSIVE_NOSACK + """
    +.1 write 3000
    +0  > P. 1:3001(3000) ack 1
    +.3 > . 1:1001(1000) ack 1
    +.1 < . 1:1(0) ack 1001 win 512
    +0  > . 1001:3001(2000) ack 1
    """)
    assert s.c.ca_state is CaState.LOSS


def test_paws_drops_old_timestamp() -> None:
    s = Script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000,sackOK,TS val 1000 ecr 0,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 100 ecr 1000,nop,wscale 7>
    +.1 < . 1:1(0) ack 1 win 512 <nop,nop,TS val 1100 ecr 0>
    +0  < . 1:101(100) ack 1 win 512 <nop,nop,TS val 1200 ecr 0>
    +0  > . 1:1(0) ack 101 <nop,nop,TS val 200 ecr 1200>
    +.1 < . 101:201(100) ack 1 win 512 <nop,nop,TS val 900 ecr 0>
    +0  > . 1:1(0) ack 101 <nop,nop,TS val 300 ecr 1200>
    """)
    assert s.c.readable_bytes == 100


def test_timestamps_give_rtt_for_retransmitted_data() -> None:
    # RFC 7323 RTTM: the echoed timestamp measures RTT even where Karn forbids the sequence
    # sample.
    s = Script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000,sackOK,TS val 1000 ecr 0,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <...>
    +.1 < . 1:1(0) ack 1 win 512 <nop,nop,TS val 1100 ecr 0>
    +0  write 500
    +0  > P. 1:501(500) ack 1 <...>
    +.3 > P. 1:501(500) ack 1 <...>
    """)
    conn = s.c
    samples = conn.rtt.samples
    echoed = conn._tsval(s.now)  # the TS val of the retransmission just sent
    s.now += 0.05
    ack = TcpSegment("192.0.2.1", "192.168.0.1", 48879, 8080, (s.irs + 1) & 0xFFFFFFFF,
                     (s.iss + 501) & 0xFFFFFFFF, TcpFlags.ACK, 512, 0,
                     TcpOptions(timestamps=Timestamps(1200, echoed)))
    conn.on_segment(ack, s.now)
    assert conn.rtt.samples == samples + 1
    assert abs(conn.rtt.latest_rtt - 0.05) < 0.0015  # type: ignore[operator]
