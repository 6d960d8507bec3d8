"""Sender-side SACK reneging (RFC 2018 section 8) as Linux handles it: an ACK whose cumulative
point stops at SACKed data arms the retransmission timer at max(srtt/2, 10 ms)
(tcp_check_sack_reneging); an RTO that finds the head SACKed forgets every SACK mark and
resends everything unacknowledged (tcp_timeout_mark_lost, LINUX_MIB_TCPSACKRENEGING)."""

from __future__ import annotations

from tcp_helpers import Script

from tcpstack.tcp import events as ev
from tcpstack.tcp.state import CaState
from tcpstack.tcp.timers import TimerKind

MASK = 0xFFFFFFFF


def sent_seqs(s: Script) -> list[int]:
    """Relative sequence numbers of everything emitted and not yet matched by a script line."""
    return [(e.seg.seq - s.iss) & MASK for e in s.out]

# Handshake RTT 100 ms: srtt 0.1, RTO 0.3.
SACK = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <...>
+.1 < . 1:1(0) ack 1 win 1000
"""

# 1001:2001 is lost, 2001:4001 SACKed; RACK repairs the hole after its reordering window.
HOLE = SACK + """
+0    write 4000
+0    > P. 1:4001(4000) ack 1
+.1   < . 1:1(0) ack 1001 win 1000 <sack 2001:4001,nop,nop>
+.027 > . 1001:2001(1000) ack 1
"""


def test_reneged_sacked_data_is_retransmitted_after_half_srtt() -> None:
    s = Script().run(HOLE)
    assert s.c.sack_reneging == 0
    # The repair arrives, but the peer pruned its out-of-order queue: it ACKs 2001 only.
    s.run("+.1 < . 1:1(0) ack 2001 win 1000")
    # Not the 0.3 s RTO: srtt/2 = 50 ms (Linux tcp_check_sack_reneging).
    deadline = s.c.timers.get(TimerKind.RETRANSMIT)
    assert deadline is not None and abs(deadline - (s.now + 0.05)) < 1e-6
    s.run("""
    +.049 none
    +.001 > . 2001:3001(1000) ack 1
    """)
    assert s.c.sack_reneging == 1 and s.c.ca_state is CaState.LOSS
    assert any(isinstance(e, ev.RtoFired) for e in s.c.drain_events())
    # Every SACK mark is gone: the segment after it is resent too, not skipped as delivered.
    s.run("""
    +.1 < . 1:1(0) ack 3001 win 1000
    +0  > P. 3001:4001(1000) ack 1
    +.1 < . 1:1(0) ack 4001 win 1000
    +0  none
    """)
    assert s.c.snd_una == s.c.snd_nxt and not s.c.sb
    assert s.c.sack_reneging == 1


def test_reneging_timer_has_a_10ms_floor() -> None:
    # Handshake RTT 4 ms: srtt/2 = 2 ms, below Linux's 10 ms floor.
    s = Script().run("""
    +0    < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0    > S. 0:0(0) ack 1 <...>
    +.004 < . 1:1(0) ack 1 win 1000
    +0    write 3000
    +0    > P. 1:3001(3000) ack 1
    +.004 < . 1:1(0) ack 1 win 1000 <sack 1001:3001,nop,nop>
    """)
    # Repair the hole at whatever moment RACK chooses, then renege.
    s.advance(s.now + 0.1)
    assert sent_seqs(s) == [1]
    s.out.clear()
    s.run("+0 < . 1:1(0) ack 1001 win 1000")
    deadline = s.c.timers.get(TimerKind.RETRANSMIT)
    assert deadline is not None and abs(deadline - (s.now + 0.010)) < 1e-6
    s.run("""
    +.009 none
    +.001 > . 1001:2001(1000) ack 1
    """)
    assert s.c.sack_reneging == 1


def test_ack_onto_unsacked_data_keeps_the_normal_rto() -> None:
    # 2001:3001 and 3001:4001 lost, 4001:5001 SACKed: the ACK of 2001 lands on unSACKed data,
    # which is ordinary progress, not reneging.
    s = Script().run(SACK + """
    +0    write 5000
    +0    > P. 1:5001(5000) ack 1
    +.1   < . 1:1(0) ack 2001 win 1000 <sack 4001:5001,nop,nop>
    """)
    deadline = s.c.timers.get(TimerKind.RETRANSMIT)
    assert deadline is None or deadline - s.now > 0.05 + 1e-6
    s.advance(s.now + 2.0)
    assert s.c.sack_reneging == 0
    # 4001:5001 stays SACKed through recovery: it is never sent again.
    resent = set(sent_seqs(s))
    assert 4001 not in resent and 2001 in resent


def test_no_renege_if_the_peer_acks_the_sacked_data_within_half_srtt() -> None:
    # The ACK stopping at SACKed data may just be overtaken by the one that covers it (Linux's
    # reason for waiting srtt/2): if that one arrives in time, nothing is resent.
    s = Script().run(HOLE + """
    +.1   < . 1:1(0) ack 2001 win 1000
    +.04  < . 1:1(0) ack 4001 win 1000
    +1    none
    """)
    assert s.c.sack_reneging == 0 and s.c.snd_una == s.c.snd_nxt
    assert s.c.timers.get(TimerKind.RETRANSMIT) is None
    assert s.c.ca_state is CaState.OPEN
