"""The ``freebsd`` profile's own behaviour, each next to what ``linux`` does in the same place.

Modelled on FreeBSD's tcp_input.c/tcp_output.c/tcp_timewait.c as the freebsd-net/tcp-testsuite
scripts (conformance corpus) observe them: sbspace-based window, receive buffer rounded up to the
MSS, DELAY_ACK every second segment, rexmit_slop, ecn.maxretries, insecure_syn, drop_synfin,
SYN text queued in SYN-SENT, and tcp_twcheck's TIME-WAIT.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from tcp_helpers import Script

from tcpstack.tcp.config import FREEBSD, PROFILES, ConnectionOptions, SynFinPolicy
from tcpstack.tcp.events import ResetReceived
from tcpstack.tcp.state import TcpState

BSD = ConnectionOptions(profile="freebsd", timestamps=False, window_scaling=False)
LINUX = ConnectionOptions(profile="linux", timestamps=False, window_scaling=False)

# A passive open without window scaling or timestamps, as most FreeBSD corpus scripts do.
PASSIVE = """
+0   < S 0:0(0) win 65535 <mss 1460,sackOK,eol,eol>
+0   > S. 0:0(0) ack 1 win {synack_win} <...>
+.01 < . 1:1(0) ack 1 win 65535
"""
ESTABLISHED_BY_CONNECT = """
+0   connect
+0   > S 0:0(0) win 65535 <...>
+.1  < S. 0:0(0) ack 1 win 32767 <mss 1460,sackOK,eol,eol>
+0   > . 1:1(0) ack 1 win 65535
"""


def freebsd_profile(**changes: Any) -> ConnectionOptions:
    """BSD options under the freebsd profile with ``changes`` (as a sysctl would make them; the
    engine looks the profile up by name, the fixture below restores it)."""
    PROFILES["freebsd"] = attrs.evolve(FREEBSD, **changes)
    return BSD


@pytest.fixture(autouse=True)
def _restore_freebsd_profile() -> Iterator[None]:
    yield
    PROFILES["freebsd"] = FREEBSD


# -- window ----------------------------------------------------------------------------------

def test_synack_window_is_the_free_buffer_not_rounded_to_the_mss() -> None:
    # FreeBSD: min(sbspace = 65536, TCP_MAXWIN); Linux rounds 64 KiB down to 44 * 1460.
    Script(options=BSD).run(PASSIVE.format(synack_win=65535))
    Script(options=LINUX).run(PASSIVE.format(synack_win=64240))


def test_receive_buffer_is_rounded_up_to_whole_segments_and_the_window_follows_it() -> None:
    s = Script(options=BSD).run(PASSIVE.format(synack_win=65535))
    assert s.c.rcv.capacity == 45 * 1460  # tcp_mss(): roundup(65536, 1460) = 65700
    s.run("""
    +0   < . 1:800(799) ack 1 win 65535
    +0   < . 800:801(1) ack 1 win 65535
    +0   > . 1:1(0) ack 801 win 64900
    """)
    # 65700 - 800 unread bytes, announced exactly (no rcv_ssthresh clamp, no SWS step).


def test_linux_buffer_is_not_rounded_up() -> None:
    s = Script(options=LINUX).run(PASSIVE.format(synack_win=64240))
    assert s.c.rcv.capacity == 131072


def test_segment_just_inside_the_free_buffer_is_acceptable_beyond_the_announced_window() -> None:
    # FreeBSD RCV.WND = max(sbspace, rcv_adv - rcv_nxt) = 65700 although the SYN-ACK said 65535:
    # a RST at rcv_nxt + 65699 is in the window (insecure_rst: any in-window RST resets).
    opts = ConnectionOptions(profile="freebsd", timestamps=False, window_scaling=False,
                             insecure_rst=True)
    s = Script(options=opts).run(ESTABLISHED_BY_CONNECT)
    s.run("+.1 < R 65700:65700(0) win 32767")
    assert s.c.state is TcpState.CLOSED
    assert s.c.error == "connection reset by peer"


def test_rst_one_past_the_free_buffer_is_ignored() -> None:
    opts = ConnectionOptions(profile="freebsd", timestamps=False, window_scaling=False,
                             insecure_rst=True)
    s = Script(options=opts).run(ESTABLISHED_BY_CONNECT)
    s.run("+.1 < R 65701:65701(0) win 32767")
    assert s.c.state is TcpState.ESTABLISHED


# -- delayed ACK -----------------------------------------------------------------------------

def test_first_segment_waits_for_the_delack_timer_of_100ms() -> None:
    s = Script(options=BSD).run(PASSIVE.format(synack_win=65535))
    s.run("""
    +0   < . 1:101(100) ack 1 win 65535
    +0   none
    +.1  > . 1:1(0) ack 101 win 65535
    """)


def test_every_second_segment_is_acked_at_once() -> None:
    s = Script(options=BSD).run(PASSIVE.format(synack_win=65535))
    s.run("""
    +0   < . 1:101(100) ack 1 win 65535
    +.01 < . 101:201(100) ack 1 win 65535
    +0   > . 1:1(0) ack 201 win 65500
    +.01 < . 201:301(100) ack 1 win 65535
    +0   none
    """)


def test_linux_acks_the_first_segments_at_once_in_quickack_mode() -> None:
    s = Script(options=LINUX).run(PASSIVE.format(synack_win=64240))
    s.run("""
    +0   < . 1:101(100) ack 1 win 65535
    +0   > . 1:1(0) ack 101 <...>
    """)


# -- SYN retransmission ------------------------------------------------------------------------

def test_syn_timeouts_add_rexmit_slop_after_the_first() -> None:
    # 1 s (rexmit_initial), then 2 * 1 s + 200 ms, then 4 * 1 s + 200 ms.
    Script(options=BSD).run("""
    +0   connect
    +0   > S 0:0(0) <...>
    +1   > S 0:0(0) <...>
    +2.2 > S 0:0(0) <...>
    +4.2 > S 0:0(0) <...>
    """)


def test_linux_syn_timeouts_double_without_slop() -> None:
    Script(options=LINUX).run("""
    +0   connect
    +0   > S 0:0(0) <...>
    +1   > S 0:0(0) <...>
    +2   > S 0:0(0) <...>
    """)


def test_ecn_setup_syn_stops_after_ecn_maxretries() -> None:
    # net.inet.tcp.ecn.maxretries = 1: the first retransmission still asks, the second not.
    opts = ConnectionOptions(profile="freebsd", ecn=True, timestamps=False,
                             window_scaling=False)
    s = Script(options=opts).run("""
    +0   connect
    +0   > SEW 0:0(0) <...>
    +1   > SEW 0:0(0) <...>
    +2.2 > S 0:0(0) <...>
    +.1  < SE. 0:0(0) ack 1 win 32767 <mss 1460>
    +0   > . 1:1(0) ack 1
    """)
    assert not s.c.ecn_ok  # an ECE answer to a SYN that did not ask does not turn ECN on


def test_ecn_maxretries_zero_asks_only_on_the_first_syn() -> None:
    freebsd_profile(ecn_syn_retries=0)
    Script(options=ConnectionOptions(profile="freebsd", ecn=True)).run("""
    +0   connect
    +0   > SEW 0:0(0) <...>
    +1   > S 0:0(0) <...>
    """)


# -- RFC 5961 4.2 and net.inet.tcp.insecure_syn --------------------------------------------------

def test_secure_syn_in_window_draws_a_challenge_ack() -> None:
    s = Script(options=BSD).run(ESTABLISHED_BY_CONNECT)
    s.run("""
    +.1  < S 100:100(0) win 32767 <mss 1460>
    +0   > . 1:1(0) ack 1 win 65535
    """)
    assert s.c.state is TcpState.ESTABLISHED


def test_insecure_syn_in_window_resets_the_connection() -> None:
    opts = ConnectionOptions(profile="freebsd", timestamps=False, window_scaling=False,
                             insecure_syn=True)
    s = Script(options=opts).run(ESTABLISHED_BY_CONNECT)
    s.run("""
    +.1  < S 65700:65700(0) win 32767 <mss 1460>
    +0   > R. 1:1(0) ack 1 win 0
    """)
    assert s.c.state is TcpState.CLOSED
    assert s.c.error == "connection reset by peer"


@pytest.mark.parametrize("seq", [0, 65701])  # left of rcv_nxt, right of the window
def test_insecure_syn_outside_the_window_still_draws_an_ack(seq: int) -> None:
    opts = ConnectionOptions(profile="freebsd", timestamps=False, window_scaling=False,
                             insecure_syn=True)
    s = Script(options=opts).run(ESTABLISHED_BY_CONNECT)
    s.run(f"""
    +.1  < S {seq}:{seq}(0) win 32767 <mss 1460>
    +0   > . 1:1(0) ack 1 win 65535
    """)
    assert s.c.state is TcpState.ESTABLISHED


# -- SYN|FIN and SYN text in SYN-SENT ------------------------------------------------------------

def test_synfin_in_syn_sent_is_a_syn_whose_fin_and_text_wait_for_established() -> None:
    # drop_synfin=0: simultaneous open; the SYN-ACK acknowledges only the SYN, the text is
    # queued (RFC 9293 3.10.7.3) and delivered on the ACK, the FIN is dropped with it.
    s = Script(options=BSD).run("""
    +0   connect
    +0   > S 0:0(0) <...>
    +.1  < SF 0:3(3) win 32767 <mss 1460,sackOK,eol,eol>
    +0   > S. 0:0(0) ack 1 <...>
    """)
    assert s.c.state is TcpState.SYN_RECEIVED
    assert s.c.readable_bytes == 0
    s.run("+.1 < . 4:4(0) ack 1 win 65535")
    assert s.c.state is TcpState.ESTABLISHED
    assert s.c.receive(100) == bytes(range(3))
    assert not s.c.at_eof
    s.run("""
    +0   close
    +0   > F. 1:1(0) ack 4 <...>
    """)


def test_drop_synfin_drops_a_synfin_in_syn_sent() -> None:
    opts = freebsd_profile(synfin_policy=SynFinPolicy.DROP)
    s = Script(options=opts).run("""
    +0   connect
    +0   > S 0:0(0) <...>
    +.1  < SF 0:3(3) win 32767 <mss 1460>
    +0   none
    +.9  > S 0:0(0) <...>
    """)
    assert s.c.state is TcpState.SYN_SENT


def test_linux_discards_the_text_of_a_syn_in_syn_sent() -> None:
    s = Script(options=LINUX).run("""
    +0   connect
    +0   > S 0:0(0) <...>
    +.1  < S 0:3(3) win 32767 <mss 1460>
    +0   > S. 0:0(0) ack 1 <...>
    +.1  < . 4:4(0) ack 1 win 65535
    """)
    assert s.c.state is TcpState.ESTABLISHED
    assert s.c.readable_bytes == 0


# -- TIME-WAIT (tcp_twcheck) -------------------------------------------------------------------

TIME_WAIT = PASSIVE.format(synack_win=65535) + """
+.1  shutdown_wr
+0   > F. 1:1(0) ack 1 win 65535
+.1  < F. 1:1(0) ack 2 win 32767
+0   > . 2:2(0) ack 2 win 65535
"""


def test_time_wait_ignores_a_rst_rfc1337() -> None:
    s = Script(options=BSD).run(TIME_WAIT)
    assert s.c.state is TcpState.TIME_WAIT
    s.run("+.1 < R 2:2(0) win 32767")
    assert s.c.state is TcpState.TIME_WAIT
    assert not any(isinstance(e, ResetReceived) for e in s.c.drain_events())


def test_linux_time_wait_is_ended_by_a_rst() -> None:
    s = Script(options=LINUX).run(PASSIVE.format(synack_win=64240) + """
    +.1  shutdown_wr
    +0   > F. 1:1(0) ack 1 <...>
    +.1  < F. 1:1(0) ack 2 win 32767
    +0   > . 2:2(0) ack 2 <...>
    +.1  < R 2:2(0) win 32767
    """)
    assert s.c.state is TcpState.CLOSED


@pytest.mark.parametrize("segment", [
    "< . 3:3(0) ack 2 win 32767",  # in the window but not at rcv_nxt
    "< F. 2:2(0) ack 2 win 32767",  # a new FIN
    "< . 2:2(0) ack 1 win 32767",  # an old ACK
])
def test_time_wait_answers_anything_but_an_exact_duplicate_ack(segment: str) -> None:
    s = Script(options=BSD).run(TIME_WAIT)
    s.run(f"""
    +.1  {segment}
    +0   > . 2:2(0) ack 2 win 65535
    """)
    assert s.c.state is TcpState.TIME_WAIT


def test_time_wait_drops_an_exact_duplicate_ack_and_segments_without_ack() -> None:
    s = Script(options=BSD).run(TIME_WAIT)
    s.run("""
    +.1  < . 2:2(0) ack 2 win 32767
    +0   none
    +.1  < F 65701:65701(0) win 32767
    +0   none
    """)
    assert s.c.state is TcpState.TIME_WAIT
