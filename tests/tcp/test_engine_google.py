"""Linux packet-level behaviour from the google packetdrill corpus, as engine scenario tables.

Each table is a transcription of one script in ../shared/conformance/google/ (named in the test),
with the socket calls mapped to engine calls. ``common/defaults.sh`` sets tcp_rmem's maximum to
15 MiB, which is what makes Linux announce ``wscale 8``; the linux profile derives the scale
from the largest receive buffer the same way, so these tests use that buffer.
"""

from __future__ import annotations

import pytest
from tcp_helpers import Script

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.state import CaState, TcpState


def script(**kw: object) -> Script:
    opts = ConnectionOptions(**{**{"receive_buffer": 15 * 1024 * 1024, "send_buffer": 256 * 1024},
                                **kw})  # type: ignore[arg-type]
    return Script(options=opts)


def test_blocking_accept_handshake_and_first_write() -> None:
    # blocking/blocking-accept.pkt (peer offers no SACK/TS: the SYN-ACK mirrors that)
    script().run("""
    +.1 < S 0:0(0) win 32792 <mss 1000,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +.1 write 2000
    +0  > P. 1:2001(2000) ack 1
    """)


def test_blocking_connect_active_handshake() -> None:
    # blocking/blocking-connect.pkt: Linux SYN layout mss,sackOK,TS,nop,wscale
    s = script().run("""
    +.1 connect
    +0  > S 0:0(0) <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 8>
    +.1 < S. 0:0(0) ack 1 win 5792 <mss 1460,nop,wscale 2,nop,nop,sackOK>
    +0  > . 1:1(0) ack 1
    """)
    assert s.c.state is TcpState.ESTABLISHED
    assert s.c.snd_wscale == 2 and s.c.sack_ok and not s.c.ts_ok


def test_blocking_read_acks_each_segment_in_quickack_mode() -> None:
    # blocking/blocking-read.pkt
    s = script().run("""
    +.1 < S 0:0(0) win 32792 <mss 1000,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +.1 < P. 1:2001(2000) ack 1 win 257
    +0  > . 1:1(0) ack 2001
    +0  read 2000 = 2000
    +.1 < P. 2001:4001(2000) ack 1 win 257
    +0  > . 1:1(0) ack 4001
    +.1 < P. 4001:6001(2000) ack 1 win 257
    +0  > . 1:1(0) ack 6001
    +0  read 1000 = 1000
    +0  read 1000 = 1000
    """)
    assert s.c.readable_bytes == 2000


def test_close_local_close_then_remote_fin() -> None:
    # close/close-local-close-then-remote-fin.pkt
    s = script().run("""
    +.01 connect
    +0   > S 0:0(0) <...>
    +0   < S. 0:0(0) ack 1 win 32768 <mss 1000,nop,wscale 6,nop,nop,sackOK>
    +0   > . 1:1(0) ack 1
    +0   write 1000
    +0   > P. 1:1001(1000) ack 1
    +0   < . 1:1(0) ack 1001 win 257
    +0   close
    +0   > F. 1001:1001(0) ack 1
    +0   < . 1:1(0) ack 1002 win 257
    +0   < F. 1:1(0) ack 1002 win 257
    +0   > . 1002:1002(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT


def test_close_on_syn_sent_then_synack_draws_rst() -> None:
    # close/close-on-syn-sent.pkt: the closed connection answers the late SYN-ACK with a RST
    s = script().run("""
    +0  connect
    +0  > S 0:0(0) <...>
    +0  close
    +.1 < S. 0:0(0) ack 1 win 32000 <mss 1460,nop,wscale 7>
    +0  > R 1:1(0)
    """)
    assert s.c.state is TcpState.CLOSED and s.c.error is None


def test_close_remote_fin_then_close_last_ack() -> None:
    # close/close-remote-fin-then-close.pkt
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   < . 1:1(0) ack 1 win 257
    +.01 < F. 1:1(0) ack 1 win 257
    +0   > . 1:1(0) ack 2
    +0   read 1000 = 0
    +.01 close
    +0   > F. 1:1(0) ack 2
    +.01 < . 2:2(0) ack 2 win 257
    +.01 < . 2:2(0) ack 2 win 257
    +0   > R 2:2(0)
    """)
    assert s.c.state is TcpState.CLOSED


def test_fast_retransmit_with_sack() -> None:
    # fast_retransmit/fr-4pkt-sack.pkt
    s = script().run("""
    +.1 < S 0:0(0) win 32792 <mss 1460,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +0  write 5840
    +0  > P. 1:5841(5840) ack 1
    +.1 < . 1:1(0) ack 1 win 257 <sack 1461:2921,nop,nop>
    +0  < . 1:1(0) ack 1 win 257 <sack 1461:4381,nop,nop>
    +0  < . 1:1(0) ack 1 win 257 <sack 1461:5841,nop,nop>
    +0  > . 1:1461(1460) ack 1
    +.1 < . 1:1(0) ack 5841 win 257
    +.1 close
    +0  > F. 5841:5841(0) ack 1
    +.1 < F. 1:1(0) ack 5842 win 257
    +0  > . 5842:5842(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT
    assert s.c.total_retrans == 1


def test_fast_retransmit_newreno_dupacks() -> None:
    # fast_retransmit/fr-4pkt.pkt (no SACK: three duplicate ACKs)
    s = script().run("""
    +.1 < S 0:0(0) win 32792 <mss 1460,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +0  write 5840
    +0  > P. 1:5841(5840) ack 1
    +.1 < . 1:1(0) ack 1 win 257
    +0  < . 1:1(0) ack 1 win 257
    +0  < . 1:1(0) ack 1 win 257
    +0  > . 1:1461(1460) ack 1
    +.1 < . 1:1(0) ack 5841 win 257
    +.1 close
    +0  > F. 5841:5841(0) ack 1
    +.1 < F. 1:1(0) ack 5842 win 257
    +0  > . 5842:5842(0) ack 2
    """)
    assert s.c.ca_state is CaState.OPEN


def test_prr_slow_start_reduction_bound() -> None:
    # fast_recovery/prr-ss-10pkt-lost-1.pkt, with its tcp_info assertions
    s = script()
    s.run("""
    +.1  < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1  < . 1:1(0) ack 1 win 320
    +0   write 10000
    +0   > P. 1:10001(10000) ack 1
    +.11 < . 1:1(0) ack 1 win 320 <sack 1001:2001,nop,nop>
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:3001,nop,nop>
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:4001,nop,nop>
    +0   > . 1:1001(1000) ack 1
    """)
    info = s.c.info(s.now)
    assert (info.ca_state, info.snd_cwnd, info.snd_ssthresh) == (CaState.RECOVERY, 7, 7)
    s.run("""
    +.01 write 7000
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:5001,nop,nop>
    +0   > . 10001:11001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:6001,nop,nop>
    +0   > . 11001:12001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:7001,nop,nop>
    +0   > . 12001:13001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:8001,nop,nop>
    +0   > . 13001:14001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:9001,nop,nop>
    +0   > . 14001:15001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:10001,nop,nop>
    +0   > . 15001:16001(1000) ack 1
    +.02 < . 1:1(0) ack 10001 win 320
    +0   > P. 16001:17001(1000) ack 1
    """)
    info = s.c.info(s.now)
    assert (info.ca_state, info.snd_cwnd, info.snd_ssthresh) == (CaState.OPEN, 7, 7)


def test_limited_transmit_with_sack() -> None:
    # limited_transmit/limited-transmit-sack.pkt
    s = script().run("""
    +.1  < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1  < . 1:1(0) ack 1 win 320
    +0   write 15000
    +0   > P. 1:10001(10000) ack 1
    +.11 < . 1:1(0) ack 1 win 320 <sack 1001:2001,nop,nop>
    +0   > . 10001:11001(1000) ack 1
    +.01 < . 1:1(0) ack 1 win 320 <sack 1001:3001,nop,nop>
    +0   > . 11001:12001(1000) ack 1
    +.01 < . 1:1(0) ack 3001 win 320
    +0   > . 12001:14001(2000) ack 1
    +.02 < . 1:1(0) ack 5001 win 320
    +0   > P. 14001:15001(1000) ack 1
    +.02 < . 1:1(0) ack 7001 win 320
    +.02 < . 1:1(0) ack 9001 win 320
    +.02 < . 1:1(0) ack 11001 win 320
    +.02 < . 1:1(0) ack 13001 win 320
    +.02 < . 1:1(0) ack 15001 win 320
    +.17 close
    +0   > F. 15001:15001(0) ack 1
    +.1  < F. 1:1(0) ack 15002 win 257
    +0   > . 15002:15002(0) ack 2
    """)
    assert s.c.total_retrans == 0  # the reordering was not mistaken for loss


def test_mss_server_clamp() -> None:
    # mss/mss-setsockopt-tcp_maxseg-server.pkt: our MSS 1100 is advertised and clamps sending
    s = script(mss=1100).run("""
    +.1 < S 0:0(0) win 32792 <mss 1300,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1100,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +.1 write 12000
    +0  > P. 1:11001(11000) ack 1
    """)
    info = s.c.info(s.now)
    assert info.advmss == 1100 and info.snd_mss == 1100


def test_mss_from_peer_option() -> None:
    # mss/mss-getsockopt-tcp_maxseg-server.pkt
    s = script().run("""
    +.1 < S 0:0(0) win 32792 <mss 1100,nop,wscale 8>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    """)
    assert s.c.info(s.now).snd_mss == 1100


def test_nagle_off_https_client() -> None:
    # nagle/https_client.pkt (timestamps off, nodelay on)
    s = script(nodelay=True, timestamps=False).run("""
    +0  connect
    +0  > S 0:0(0) <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1 < S. 0:0(0) ack 1 win 5792 <mss 974,nop,nop,sackOK,nop,wscale 7>
    +0  > . 1:1(0) ack 1
    +0  write 517
    +0  > P. 1:518(517) ack 1
    +.1 < . 1:1(0) ack 518 win 229
    +0  < P. 1:144(143) ack 1 win 229
    +0  > . 518:518(0) ack 144
    +0  read 1000 = 143
    +0  write 51
    +0  > P. 518:569(51) ack 144
    +.03 write 2002
    +0  > P. 569:2571(2002) ack 144
    +.1 < . 1:1(0) ack 2571 win 229
    """)
    assert s.c.mss_cache == 974


@pytest.mark.parametrize("per_ack", [1, 2])
def test_slow_start_ack_per_n_packets(per_ack: int) -> None:
    # slow_start/slow-start-ack-per-1pkt.pkt and -2pkt.pkt: cwnd 10 -> 20 over one RTT
    s = script(send_buffer=200000)
    s.run("""
    +.1 < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 257
    +0  write 30000
    +0  > P. 1:10001(10000) ack 1
    """)
    assert s.c.info(s.now).snd_cwnd == 10
    s.advance(s.now + 0.105)
    sent = 10001
    for acked in range(1000 * per_ack, 10001, 1000 * per_ack):
        s.line(f"+0 < . 1:1(0) ack {acked + 1} win 257")
        s.line(f"+0 > P. {sent}:{sent + 2000 * per_ack}({2000 * per_ack}) ack 1")
        sent += 2000 * per_ack
    assert s.c.info(s.now).snd_cwnd == 20


def test_ts_recent_fin_and_rst_tsval() -> None:
    # ts_recent/fin_tsval.pkt: TS val advances at 1 kHz, ecr is the peer's latest
    s = script().run("""
    +0  < S 0:0(0) win 20000 <mss 1000,sackOK,TS val 100 ecr 0>
    +0  > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 100 ecr 100>
    +.1 < . 1:1(0) ack 1 win 20000 <nop,nop,TS val 200 ecr 100>
    +1  close
    +0  > F. 1:1(0) ack 1 <nop,nop,TS val 1200 ecr 200>
    """)
    assert s.c.state is TcpState.FIN_WAIT_1


def test_ts_recent_reset_on_close_with_unread_data() -> None:
    # ts_recent/reset_tsval.pkt: close() with unread data sends RST|ACK with timestamps
    s = script().run("""
    +0  < S 0:0(0) win 20000 <mss 1000,sackOK,TS val 100 ecr 0>
    +0  > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 100 ecr 100>
    +.1 < . 1:1(0) ack 1 win 20000 <nop,nop,TS val 200 ecr 100>
    +0  < . 1:1001(1000) ack 1 win 20000 <nop,nop,TS val 201 ecr 100>
    +0  > . 1:1(0) ack 1001 <nop,nop,TS val 200 ecr 201>
    +1  close
    +0  > R. 1:1(0) ack 1001 <nop,nop,TS val 1200 ecr 201>
    """)
    assert s.c.state is TcpState.CLOSED


def test_validate_established_segment_without_ack_is_dropped() -> None:
    # validate/validate-established-no-flags.pkt
    s = script().run("""
    +0   < S 0:0(0) win 20000 <mss 1000,sackOK,nop,nop>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK>
    +.01 < . 1:1(0) ack 1 win 20000
    +.01 < - 1:1001(1000) win 20000
    """)
    assert s.c.readable_bytes == 0
    s.run("""
    +.01 < . 1:1001(1000) ack 1 win 20000
    +0   > . 1:1(0) ack 1001
    """)
    assert s.c.readable_bytes == 1000


def test_shutdown_wr_then_data_and_fin() -> None:
    # shutdown/shutdown-wr-close.pkt
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   < . 1:1(0) ack 1 win 257
    +.01 shutdown_wr
    +0   > F. 1:1(0) ack 1
    +0   < . 1:1(0) ack 2 win 257
    +.01 < . 1:1001(1000) ack 2 win 257
    +0   > . 2:2(0) ack 1001
    +0   read 1000 = 1000
    +.01 close
    +.01 < F. 1001:1001(0) ack 2 win 257
    +0   > . 2:2(0) ack 1002
    """)
    assert s.c.state is TcpState.TIME_WAIT
    with pytest.raises(BrokenPipeError):
        s.c.send(b"x")


def test_shutdown_rdwr_with_queued_data_fin_after_data() -> None:
    # shutdown/shutdown-rdwr-write-queue-close.pkt: FIN right after the window of data,
    # even with cwnd full (Linux does not hold a lone FIN for cwnd)
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.01 < . 1:1(0) ack 1 win 257
    +.01 write 10000
    +0   > P. 1:10001(10000) ack 1
    +.01 shutdown_rd
    +0   shutdown_wr
    +0   > F. 10001:10001(0) ack 1
    +.01 close
    +.02 < . 1:1(0) ack 10002 win 257
    +.01 < F. 1:1(0) ack 10002 win 257
    +0   > . 10002:10002(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT
