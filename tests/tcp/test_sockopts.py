"""Connection.set_options: run-time option changes as Linux's setsockopt applies them."""

from __future__ import annotations

import pytest
from tcp_helpers import IRS, ISS, LOCAL, REMOTE, Script

from tcpstack.tcp.config import ConnectionOptions, KeepaliveOptions
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.events import UserTimeout
from tcpstack.tcp.state import TcpState
from tcpstack.tcp.timers import TimerKind
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment

HANDSHAKE = """
+0   < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
+0   > S. 0:0(0) ack 1 <...>
+.1  < . 1:1(0) ack 1 win 1000
"""


def established(**kw: object) -> Script:
    return Script(options=ConnectionOptions(**kw)).run(HANDSHAKE)  # type: ignore[arg-type]


def test_unknown_option_names_it_and_changes_nothing() -> None:
    s = established()
    before = s.c.options
    with pytest.raises(ValueError, match="bogus, colour"):
        s.c.set_options(nodelay=True, bogus=1, colour="red")
    assert s.c.options == before and not s.c.opts.nodelay


def test_bad_value_changes_nothing() -> None:
    s = established()
    with pytest.raises(ValueError, match="send_buffer"):
        s.c.set_options(nodelay=True, send_buffer=-5)
    assert not s.c.opts.nodelay


def test_nodelay_on_flushes_data_nagle_held() -> None:
    s = established()
    s.run("""
    +0  write 500
    +0  > P. 1:501(500) ack 1
    +0  write 100
    +0  none
    +.01 setopt nodelay=1
    +0  > P. 501:601(100) ack 1
    """)
    assert s.c.opts.nodelay and s.c.options.nodelay


def test_nodelay_off_restores_nagle() -> None:
    s = established(nodelay=True)
    s.run("""
    +0  write 500
    +0  > P. 1:501(500) ack 1
    +0  setopt nodelay=0
    +0  write 100
    +0  none
    +.1 < . 1:1(0) ack 501 win 1000
    +0  > P. 501:601(100) ack 1
    """)


def test_keepalive_enabled_at_run_time_counts_idle_time_already_spent() -> None:
    s = established()
    assert not s.c.timers.is_set(TimerKind.KEEPALIVE)
    # Idle since t=0.1; idle=5 s set at t=3.1: the first probe goes at 5.1 (Linux
    # keepalive_time_elapsed), not at 8.1.
    s.advance(3.1)
    s.c.set_options(keepalive=KeepaliveOptions(enabled=True, idle=5.0, interval=1.0, count=2))
    s.run("""
    5.1 > . 0:0(0) ack 1
    6.1 > . 0:0(0) ack 1
    7.1 > R. 1:1(0) ack 1
    """)
    assert s.c.state is TcpState.CLOSED and s.c.error == "connection timed out"


def test_keepalive_disabled_at_run_time_stops_probing() -> None:
    s = established(keepalive=KeepaliveOptions(enabled=True, idle=2.0, interval=1.0, count=3))
    s.run("2.1 > . 0:0(0) ack 1")
    s.advance(2.5)
    s.c.set_options(keepalive=KeepaliveOptions(enabled=False))
    assert not s.c.timers.is_set(TimerKind.KEEPALIVE) and s.c.probes_out == 0
    s.run("+100 none")
    assert s.c.state is TcpState.ESTABLISHED


def test_keepalive_option_type_is_checked() -> None:
    s = established()
    with pytest.raises(TypeError, match="KeepaliveOptions"):
        s.c.set_options(keepalive=True)


def test_user_timeout_set_at_run_time_aborts_unacknowledged_data() -> None:
    s = established()
    s.c.set_options(user_timeout=1.5)
    s.run("""
    +0  write 1000
    +0  > P. 1:1001(1000) ack 1
    +.3 > P. 1:1001(1000) ack 1   // tail loss probe, capped by the RTO
    +.3 > P. 1:1001(1000) ack 1   // RTO, restarted by the probe
    """)
    s.advance(10.0)
    assert s.c.state is TcpState.CLOSED and s.c.error == "user timeout"
    ut = [e for e in s.c.drain_events() if isinstance(e, UserTimeout)]
    assert len(ut) == 1 and ut[0].time == pytest.approx(1.6)


def test_user_timeout_zero_turns_it_off() -> None:
    s = established(user_timeout=1.0)
    s.c.set_options(user_timeout=0)
    assert s.c.opts.user_timeout is None
    s.run("""
    +0  write 1000
    +0  > P. 1:1001(1000) ack 1
    """)
    s.advance(5.0)
    assert s.c.state is TcpState.ESTABLISHED
    with pytest.raises(ValueError, match="user_timeout"):
        s.c.set_options(user_timeout=-1)


def test_congestion_switch_keeps_cwnd_and_ssthresh() -> None:
    s = established()
    c = s.c
    c.cc.cwnd = 17 * c.mss_cache
    c.cc.ssthresh = 12 * c.mss_cache
    old = c.cc
    c.set_options(congestion="newreno")
    assert c.cc is not old and c.cc.name == "newreno"
    assert (c.cc.cwnd, c.cc.ssthresh) == (17 * c.mss_cache, 12 * c.mss_cache)
    assert c.info(s.now).congestion == "newreno" and c.opts.congestion == "newreno"
    c.set_options(congestion="newreno")  # same algorithm: nothing re-initialised
    assert c.cc.cwnd == 17 * c.mss_cache
    with pytest.raises(ValueError, match="available: .*cubic"):
        c.set_options(congestion="vegas-not-registered")
    assert c.cc.name == "newreno"


def test_send_buffer_bounds_later_sends() -> None:
    s = established()
    c = s.c
    c.set_options(send_buffer=3000)
    assert c.send(b"x" * 5000) == 3000
    c.set_options(send_buffer=1000)
    assert c.send(b"y" * 10) == 0  # queued bytes stay; nothing more fits
    c.set_options(send_buffer=8000)
    assert c.send(b"z" * 10000) == 5000


def test_receive_buffer_before_connect_sets_window_scale() -> None:
    c = Connection(LOCAL, REMOTE, iss=1000, options=ConnectionOptions())
    c.set_options(receive_buffer=60000)
    c.open_active(0.0)
    syn = c.poll_transmit(0.0)[0]
    assert syn.options.wscale == 0 and syn.window == 60000 - 60000 % 1460


def test_receive_buffer_before_synack_sets_window_scale() -> None:
    default = Connection.from_syn(_peer_syn(), iss=ISS, now=0.0)
    assert default.poll_transmit(0.0)[0].options.wscale == 7  # the 6 MiB tcp_rmem max
    conn = Connection.from_syn(_peer_syn(), iss=ISS, now=0.0)
    conn.set_options(receive_buffer=1 << 20)
    synack = conn.poll_transmit(0.0)[0]
    assert synack.options.wscale == 5 and conn.rcv.rcv_wscale == 5


def test_receive_buffer_after_handshake_never_shrinks_the_window() -> None:
    s = established(receive_buffer=200_000)
    c = s.c
    s.run("""
    +0  < P. 1:1001(1000) ack 1 win 1000
    +0  > . 1:1(0) ack 1001 <...>
    """)
    edge = c.rcv.rcv_adv
    wscale = c.rcv.rcv_wscale
    c.set_options(receive_buffer=4000)
    assert c.rcv.rcv_wscale == wscale and c.rcv.capacity == 4000
    s.run("""
    +0  < P. 1001:2001(1000) ack 1 win 1000
    +0  > . 1:1(0) ack 2001 <...>
    """)
    # The right edge advertised before stays; no new room is offered beyond it.
    assert c.rcv.rcv_adv == edge
    s.run("+0 none")


def test_mss_before_handshake_is_advertised_and_after_is_refused() -> None:
    c = Connection(LOCAL, REMOTE, iss=1000, options=ConnectionOptions())
    c.set_options(mss=1200)
    c.open_active(0.0)
    syn = c.poll_transmit(0.0)[0]
    assert syn.options.mss == 1200 and c.advmss == 1200
    with pytest.raises(ValueError, match="before the SYN"):
        c.set_options(mss=1000)
    with pytest.raises(ValueError, match="mss must be in"):
        Connection(LOCAL, REMOTE, iss=1, options=ConnectionOptions()).set_options(mss=10)


def _peer_syn() -> TcpSegment:
    return TcpSegment(REMOTE[0], LOCAL[0], REMOTE[1], LOCAL[1], IRS, 0, TcpFlags.SYN, 65535, 0,
                      TcpOptions(mss=1000, wscale=7, sack_permitted=True), b"")
