"""RACK-TLP (RFC 8985) as Linux runs it: time-based loss marking, the reordering timer, tail
loss probes and what their ACKs reveal, D-SACK adaptation and D-SACK undo."""

from __future__ import annotations

from tcp_helpers import Script

from tcpstack.tcp import events as ev
from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.state import CaState

# Handshake RTT 100 ms: srtt 0.1, min_rtt 0.1, RTO 0.3.
SACK = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <...>
+.1 < . 1:1(0) ack 1 win 1000
"""
NOSACK = """
+0  < S 0:0(0) win 65535 <mss 1000,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <...>
+.1 < . 1:1(0) ack 1 win 1000
"""


def events(s: Script, kind: type[ev.Event]) -> list[ev.Event]:
    return [e for e in s.c.drain_events() if isinstance(e, kind)]


def test_reordering_window_defers_loss_then_timer_marks_it() -> None:
    # One SACK (below `reordering` = 3): reo_wnd = min_rtt/4 = 25 ms. 1:1001 was sent at 0.1;
    # RACK.rtt is 0.1 (4001:5001's), so it is lost at 0.1 + 0.1 + 0.025 (+2 ms timer slack).
    s = Script().run(SACK + """
    +0   write 5000
    +0   > P. 1:5001(5000) ack 1
    +.1  < . 1:1(0) ack 1 win 1000 <sack 4001:5001,nop,nop>
    +0   none
    """)
    assert s.c.ca_state is CaState.DISORDER and s.c.info(s.now).lost == 0
    s.run("+.027 > . 1:1001(1000) ack 1")
    assert s.c.ca_state is CaState.RECOVERY
    # Every segment sent before 4001:5001 expired at the same moment.
    assert s.c.info(s.now).lost == 4
    lost = events(s, ev.LossDetected)
    assert lost and lost[0].segments == 4 and lost[0].burst


def test_freebsd_profile_waits_for_dupthresh() -> None:
    s = Script(options=ConnectionOptions(profile="freebsd")).run(SACK + """
    +0   write 5000
    +0   > P. 1:5001(5000) ack 1
    +.1  < . 1:1(0) ack 1 win 1000 <sack 4001:5001,nop,nop>
    +.15 none
    """)
    assert s.c.ca_state is CaState.DISORDER and s.c.loss_probes == 0


def test_tlp_retransmits_last_segment_after_pto() -> None:
    # Several segments out: PTO = 2*srtt + 2 ms = 0.202 s, earlier than the RTO (0.3 s).
    s = Script().run(SACK + """
    +0     write 3000
    +0     > P. 1:3001(3000) ack 1
    +.202  > P. 2001:3001(1000) ack 1
    """)
    all_events = s.c.drain_events()
    probes = [e for e in all_events if isinstance(e, ev.LossProbeSent)]
    assert len(probes) == 1 and probes[0].retransmission
    rexmit = [e for e in all_events if isinstance(e, ev.SegmentRetransmitted)]
    assert [(e.kind, e.end - e.start) for e in rexmit] == [(ev.RetransmitKind.PROBE, 1000)]
    assert s.c.loss_probes == 1 and s.c.info(s.now).total_retrans == 1
    # The RTO restarts from the probe: next expiry 0.3 s later, with no second probe.
    s.run("+.3 > . 1:1001(1000) ack 1")
    assert s.c.ca_state is CaState.LOSS and s.c.loss_probes == 1


def test_tlp_with_one_segment_waits_for_delayed_ack_and_is_capped_by_rto() -> None:
    # One segment: PTO = 2*srtt + TCP_RTO_MIN = 0.4 s, capped at the RTO (0.3 s).
    s = Script().run(SACK + """
    +0  write 100
    +0  > P. 1:101(100) ack 1
    +.3 > P. 1:101(100) ack 1
    """)
    assert s.c.loss_probes == 1 and s.c.info(s.now).total_rto == 0
    # srtt 10 ms: PTO 2*srtt + 200 ms = 0.22 s, RTO 0.21 s: the probe goes at the RTO's time,
    # and the RTO itself is restarted from it.
    s = Script().run("""
    +0   < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <...>
    +.01 < . 1:1(0) ack 1 win 1000
    +0   write 100
    +0   > P. 1:101(100) ack 1
    +.21 > P. 1:101(100) ack 1
    +.21 > P. 1:101(100) ack 1
    """)
    info = s.c.info(s.now)
    assert s.c.loss_probes == 1 and info.total_rto == 1


def test_tlp_sends_new_data_when_it_can() -> None:
    # cwnd-limited with data queued: the probe is the next new segment, cwnd notwithstanding.
    s = Script().run(SACK + """
    +0    write 12000
    +0    > P. 1:10001(10000) ack 1
    +.202 > . 10001:11001(1000) ack 1
    """)
    probe = events(s, ev.LossProbeSent)
    assert len(probe) == 1 and not probe[0].retransmission
    assert s.c.info(s.now).total_retrans == 0


def test_no_tlp_without_sack_or_in_freebsd_profile() -> None:
    for opts, table in ((ConnectionOptions(), NOSACK), (ConnectionOptions(profile="freebsd"), SACK)):
        s = Script(options=opts).run(table + """
        +0  write 3000
        +0  > P. 1:3001(3000) ack 1
        """)
        s.advance(s.now + 0.29)
        assert s.out == []
        assert s.c.loss_probes == 0


def test_probe_that_repairs_a_tail_loss_reduces_cwnd_once() -> None:
    # RFC 8985 7.4: the probe was ACKed without a D-SACK, so only the probe arrived and the
    # original was lost. As Linux (tcp_process_tlp_ack), the verdict comes with the first ACK
    # beyond the probe's snd_nxt: one cwnd reduction, CWR entered and left at once.
    s = Script().run(SACK + """
    +0    write 4000
    +0    > P. 1:4001(4000) ack 1
    +.1   < . 1:1(0) ack 2001 win 1000
    +.202 > P. 3001:4001(1000) ack 1
    +.05  < . 1:1(0) ack 4001 win 1000
    +0    write 1000
    +0    > P. 4001:5001(1000) ack 1
    """)
    assert events(s, ev.RecoveryEntered) == [] and s.c.tlp_high_seq is not None
    s.run("+.1 < . 1:1(0) ack 5001 win 1000")
    entered = events(s, ev.RecoveryEntered)
    assert [e.reason for e in entered] == ["tlp"]  # type: ignore[attr-defined]
    assert s.c.cc.ssthresh < 0x7FFFFFFF and s.c.ca_state is CaState.OPEN
    assert s.c.tlp_high_seq is None

def test_probe_dsacked_means_no_loss() -> None:
    s = Script().run(SACK + """
    +0    write 4000
    +0    > P. 1:4001(4000) ack 1
    +.1   < . 1:1(0) ack 2001 win 1000
    +.202 > P. 3001:4001(1000) ack 1
    +.01  < . 1:1(0) ack 4001 win 1000
    +.04  < . 1:1(0) ack 4001 win 1000 <sack 3001:4001,nop,nop>
    """)
    assert events(s, ev.RecoveryEntered) == []
    assert s.c.cc.ssthresh == 0x7FFFFFFF and s.c.tlp_high_seq is None


def test_rack_detects_a_lost_retransmission_without_rto() -> None:
    # 1:1001 is lost twice. After the first retransmission (t=0.2), new data sent later is
    # SACKed more than RACK.rtt + reo_wnd after it: the retransmission is lost too and goes
    # again, long before the RTO would.
    s = Script().run(SACK + """
    +0    write 6000
    +0    > P. 1:6001(6000) ack 1
    +.1   < . 1:1(0) ack 1 win 1000 <sack 2001:3001,nop,nop>
    +0    < . 1:1(0) ack 1 win 1000 <sack 2001:4001,nop,nop>
    +0    < . 1:1(0) ack 1 win 1000 <sack 2001:5001,nop,nop>
    +0    > . 1:1001(1000) ack 1
    +0    < . 1:1(0) ack 1 win 1000 <sack 2001:6001,nop,nop>
    +0    > . 1001:2001(1000) ack 1
    +.1   < . 1:1(0) ack 1 win 1000 <sack 1001:6001,nop,nop>
    +0    > . 1:1001(1000) ack 1
    """)
    info = s.c.info(s.now)
    assert info.total_rto == 0 and info.total_retrans == 3
    s.run("+.1 < . 1:1(0) ack 6001 win 1000")
    assert s.c.ca_state is CaState.OPEN


def test_dsack_undoes_a_spurious_fast_retransmit() -> None:
    # Reordering, not loss: 1:1001 arrives late, after its fast retransmission; the receiver
    # reports the duplicate with a D-SACK, which shows every retransmission of the episode was
    # unnecessary, so the reduction is undone (Linux tcp_try_undo_dsack).
    s = Script().run(SACK + """
    +0    write 5000
    +0    > P. 1:5001(5000) ack 1
    +.1   < . 1:1(0) ack 1 win 1000 <sack 1001:2001,nop,nop>
    +0    < . 1:1(0) ack 1 win 1000 <sack 1001:3001,nop,nop>
    +0    < . 1:1(0) ack 1 win 1000 <sack 1001:4001,nop,nop>
    +0    > . 1:1001(1000) ack 1
    """)
    cwnd_before = s.c.prior_cwnd
    assert s.c.ca_state is CaState.RECOVERY and s.c.cc.cwnd < cwnd_before
    s.run("""
    +.01  < . 1:1(0) ack 5001 win 1000
    +.1   < . 1:1(0) ack 5001 win 1000 <sack 1:1001,nop,nop>
    """)
    undone = events(s, ev.UndoneReduction)
    assert len(undone) == 1 and undone[0].reason == "dsack"  # type: ignore[attr-defined]
    assert s.c.cc.cwnd >= cwnd_before and s.c.undos == 1
    assert s.c.info(s.now).dsack_dups == 1


def test_dsack_widens_the_reordering_window() -> None:
    s = Script().run(SACK + """
    +0    write 3000
    +0    > P. 1:3001(3000) ack 1
    +.1   < . 1:1(0) ack 3001 win 1000 <sack 1:1001,nop,nop>
    """)
    assert s.c.rack_reo_wnd_steps == 2 and s.c.rack_reo_wnd_persist == 16
    s.c.reord_seen = 1
    assert abs(s.c._rack_reo_wnd() - 2 * 0.1 / 4) < 1e-9
