"""RFC 9293 state machine, RFC 5961 hardening and TIME-WAIT, as inject/expect tables.

Both sides' initial sequence numbers sit just below 2**32, so every table crosses the wrap.
"""

from __future__ import annotations

import pytest
from tcp_helpers import Script

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.events import ChallengeAckSent, ResetReceived, StateChanged
from tcpstack.tcp.state import TcpState

PASSIVE = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>
+.1 < . 1:1(0) ack 1 win 512
"""
ACTIVE = """
+0  connect
+0  > S 0:0(0) <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
+.1 < S. 0:0(0) ack 1 win 65535 <mss 1000,nop,nop,sackOK,nop,wscale 7>
+0  > . 1:1(0) ack 1
"""


def states(s: Script) -> list[TcpState]:
    return [e.new for e in s.c.drain_events() if isinstance(e, StateChanged)]


def test_passive_open_states_and_events() -> None:
    s = Script().run(PASSIVE)
    assert states(s) == [TcpState.SYN_RECEIVED, TcpState.ESTABLISHED]
    assert s.c.snd_wscale == 7 and s.c.rcv.rcv_wscale == 7


def test_active_open_states() -> None:
    s = Script().run(ACTIVE)
    assert states(s) == [TcpState.SYN_SENT, TcpState.ESTABLISHED]


def test_simultaneous_open() -> None:
    # RFC 9293 figure 7: SYN crosses SYN; both go through SYN-RECEIVED.
    s = Script().run("""
    +0  connect
    +0  > S 0:0(0) <...>
    +.1 < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>
    +.1 < S. 0:0(0) ack 1 win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +.1 < . 1:1(0) ack 1 win 512
    +0  write 100
    +0  > P. 1:101(100) ack 1
    """)
    assert states(s) == [TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED]


def test_simultaneous_close_goes_through_closing() -> None:
    s = Script(options=ConnectionOptions(time_wait=2.0)).run(PASSIVE + """
    +.1 close
    +0  > F. 1:1(0) ack 1
    +.01 < F. 1:1(0) ack 1 win 512
    +0  > . 2:2(0) ack 2
    +.01 < . 2:2(0) ack 2 win 512
    """)
    assert states(s)[-3:] == [TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.TIME_WAIT]
    s.advance(s.now + 1.99)
    assert s.c.state is TcpState.TIME_WAIT
    s.advance(s.now + 0.02)
    assert s.c.state is TcpState.CLOSED


def test_half_close_peer_fin_then_we_send_then_last_ack() -> None:
    s = Script().run(PASSIVE + """
    +.1 < F. 1:1(0) ack 1 win 512
    +0  > . 1:1(0) ack 2
    +.1 write 500
    +0  > P. 1:501(500) ack 2
    +.1 < . 2:2(0) ack 501 win 512
    +0  close
    +0  > F. 501:501(0) ack 2
    +.1 < . 2:2(0) ack 502 win 512
    """)
    assert s.c.at_eof
    assert states(s)[-3:] == [TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSED]


def test_half_close_we_fin_then_still_receive() -> None:
    s = Script().run(PASSIVE + """
    +.1 shutdown_wr
    +0  > F. 1:1(0) ack 1
    +.1 < . 1:1(0) ack 2 win 512
    +0  < . 1:1001(1000) ack 2 win 512
    +0  > . 2:2(0) ack 1001
    +0  read 2000 = 1000
    """)
    assert s.c.state is TcpState.FIN_WAIT_2


def test_time_wait_reacks_retransmitted_fin_and_restarts_timer() -> None:
    s = Script(options=ConnectionOptions(time_wait=4.0)).run(PASSIVE + """
    +.1 close
    +0  > F. 1:1(0) ack 1
    +.1 < F. 1:1(0) ack 2 win 512
    +0  > . 2:2(0) ack 2
    +3  < F. 1:1(0) ack 2 win 512
    +0  > . 2:2(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT
    s.advance(s.now + 3.9)  # 6.9 s after the first FIN: the timer was restarted at 3 s
    assert s.c.state is TcpState.TIME_WAIT
    s.advance(s.now + 0.2)
    assert s.c.state is TcpState.CLOSED


def test_default_time_wait_is_two_msl() -> None:
    s = Script().run(PASSIVE + """
    +.1 close
    +0  > F. 1:1(0) ack 1
    +.1 < F. 1:1(0) ack 2 win 512
    +0  > . 2:2(0) ack 2
    """)
    s.advance(s.now + 59.9)
    assert s.c.state is TcpState.TIME_WAIT
    s.advance(s.now + 0.2)
    assert s.c.state is TcpState.CLOSED


def test_rst_at_rcv_nxt_resets() -> None:
    s = Script().run(PASSIVE + """
    +.1 < R. 1:1(0) ack 1 win 0
    """)
    assert s.c.state is TcpState.CLOSED
    assert s.c.error == "connection reset by peer"
    assert isinstance(s.c.error_exception(), ConnectionResetError)
    assert any(isinstance(e, ResetReceived) for e in s.c.drain_events())
    with pytest.raises(ConnectionResetError):
        s.c.send(b"x")


def test_rst_in_window_but_not_at_rcv_nxt_draws_rate_limited_challenge_ack() -> None:
    # RFC 5961 3.2
    s = Script().run(PASSIVE + """
    +.1 < R. 101:101(0) ack 1 win 0
    +0  > . 1:1(0) ack 1
    +.1 < R. 201:201(0) ack 1 win 0
    +0  none
    +.5 < R. 201:201(0) ack 1 win 0
    +0  > . 1:1(0) ack 1
    """)
    assert s.c.state is TcpState.ESTABLISHED
    assert sum(isinstance(e, ChallengeAckSent) for e in s.c.drain_events()) == 2


def test_insecure_rst_accepts_in_window_rst() -> None:
    s = Script(options=ConnectionOptions(insecure_rst=True)).run(PASSIVE + """
    +.1 < R. 101:101(0) ack 1 win 0
    """)
    assert s.c.state is TcpState.CLOSED


def test_rst_outside_window_is_ignored() -> None:
    s = Script().run(PASSIVE + """
    +.1 < R. 1000001:1000001(0) ack 1 win 0
    +0  none
    """)
    assert s.c.state is TcpState.ESTABLISHED


def test_syn_in_established_draws_challenge_ack() -> None:
    # RFC 5961 4.2
    s = Script().run(PASSIVE + """
    +.1 < S 0:0(0) win 65535 <mss 1000>
    +0  > . 1:1(0) ack 1
    """)
    assert s.c.state is TcpState.ESTABLISHED


def test_ack_of_unsent_data_is_dropped_with_an_ack() -> None:
    # RFC 5961 5.2 / RFC 9293: SEG.ACK > SND.NXT
    s = Script().run(PASSIVE + """
    +.1 < . 1:101(100) ack 5001 win 512
    +0  > . 1:1(0) ack 1
    """)
    assert s.c.readable_bytes == 0


def test_unacceptable_segment_draws_ack() -> None:
    s = Script().run(PASSIVE + """
    +.1 < . 9000001:9000101(100) ack 1 win 512
    +0  > . 1:1(0) ack 1
    """)
    assert s.c.readable_bytes == 0


def test_rst_in_syn_sent_needs_acceptable_ack() -> None:
    s = Script().run("""
    +0  connect
    +0  > S 0:0(0) <...>
    +.1 < R 0:0(0) win 0
    +0  none
    """)
    assert s.c.state is TcpState.SYN_SENT
    s.run("""
    +.1 < R. 0:0(0) ack 1 win 0
    """)
    assert s.c.state is TcpState.CLOSED and s.c.error == "connection refused"


def test_bad_ack_in_syn_sent_draws_rst() -> None:
    Script().run("""
    +0  connect
    +0  > S 0:0(0) <...>
    +.1 < S. 0:0(0) ack 77 win 65535 <mss 1000>
    +0  > R 77:77(0)
    """)


def test_bad_ack_in_syn_received_draws_rst() -> None:
    s = Script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    +.1 < . 1:1(0) ack 99 win 512
    +0  > R 99:99(0)
    """)
    assert s.c.state is TcpState.SYN_RECEIVED


def test_retransmitted_syn_in_syn_received_resends_synack() -> None:
    Script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    +.5 < S 0:0(0) win 65535 <mss 1000>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    """)


def test_data_after_close_draws_rst() -> None:
    # RFC 2525 2.17 / Linux: data for a closed (orphaned) socket resets it.
    s = Script().run(PASSIVE + """
    +.1 close
    +0  > F. 1:1(0) ack 1
    +.1 < . 1:101(100) ack 1 win 512
    +0  > R 1:1(0)
    """)
    assert s.c.state is TcpState.CLOSED


def test_abort_sends_rst() -> None:
    s = Script().run(PASSIVE + """
    +.1 abort
    +0  > R. 1:1(0) ack 1
    """)
    assert s.c.error == "connection aborted"


def test_sequence_numbers_wrap_during_transfer() -> None:
    # ISS = 2**32 - 256: the 300th byte crosses the wrap on both sides.
    s = Script().run(PASSIVE + """
    +0  < P. 1:301(300) ack 1 win 512
    +0  > . 1:1(0) ack 301
    +0  write 400
    +0  > P. 1:401(400) ack 301
    +.1 < . 301:301(0) ack 401 win 512
    """)
    assert s.c.snd_una == s.c.iss + 401
    assert s.c.rcv.rcv_nxt == s.irs + 301
    assert s.c.receive(1000) == bytes(i % 251 for i in range(300))
