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
    // TLP (RFC 8985) 2*RTT + 2 ms after the FIN was sent; the script allows 10-15 ms here
    +.012 > F. 10001:10001(0) ack 1
    +.008 < . 1:1(0) ack 10002 win 257
    +.01 < F. 1:1(0) ack 10002 win 257
    +0   > . 10002:10002(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT
    assert s.c.loss_probes == 1


# -- the remaining scripts of the corpus ------------------------------------------------------


def test_blocking_write_backpressure_and_wakeup_by_acks() -> None:
    # blocking/blocking-write.pkt. SO_SNDBUF 21000 is doubled by the kernel to 42000 (the socket
    # layer's job); the engine takes the 42000 bytes. The write of 61000 blocks: the engine
    # accepts what fits and each ACK frees room. Linux wakes the writer at ACK 36001 rather than
    # 35001 because it counts skb truesize against sk_sndbuf and wakes at a third free
    # (sk_stream_write_space); that accounting belongs to the socket layer, not to TCP.
    s = script().run("""
    +.1 < S 0:0(0) win 50000 <mss 1000,nop,wscale 0>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 50000
    +0  setopt send_buffer=42000
    +0  write 61000 = 42000
    +0  > P. 1:10001(10000) ack 1
    +.1 < . 1:1(0) ack 10001 win 50000
    +0  > P. 10001:30001(20000) ack 1
    +0  write 19000 = 10000
    +.1 < . 1:1(0) ack 30001 win 50000
    +0  > P. 30001:52001(22000) ack 1
    +0  write 9000 = 9000
    """)
    assert s.c.send_space == 42000 - (61000 - 30001 + 1)


def test_mss_setsockopt_client() -> None:
    # mss/mss-setsockopt-tcp_maxseg-client.pkt: TCP_MAXSEG 1100 before connect() is advertised
    # and clamps what we send; IW10 is then 10 * 1100 bytes.
    s = script().run("""
    +0   socket
    +.01 setopt mss=1100
    +.09 connect
    +0   > S 0:0(0) <mss 1100,sackOK,TS val 100 ecr 0,nop,wscale 8>
    +.1  < S. 0:0(0) ack 1 win 32792 <mss 1460,nop,wscale 7>
    +0   > . 1:1(0) ack 1
    +.2  write 12000
    +0   > P. 1:11001(11000) ack 1
    """)
    info = s.c.info(s.now)
    assert info.advmss == 1100 and info.snd_mss == 1100


def test_sack_shift_rack_marks_lost_by_time() -> None:
    # sack/sack-shift-sacked-2-6-8-3-9-nofack.pkt, with its tcp_info assertions. On the third
    # SACK, RACK (RFC 8985; reordering window 0 once `reordering` segments are SACKed and no
    # reordering was seen) marks every unSACKed segment sent before 8001:9001 lost: 6, where
    # RFC 6675's IsLost would say 2.
    s = script().run("""
    +0    < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0    > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1   < . 1:1(0) ack 1 win 1024
    +0    write 10000
    +0    > P. 1:10001(10000) ack 1
    +.1   < . 1:1(0) ack 1 win 257 <sack 2001:3001,nop,nop>
    +.001 < . 1:1(0) ack 1 win 257 <sack 2001:3001 6001:7001,nop,nop>
    +.001 < . 1:1(0) ack 1 win 257 <sack 2001:3001 6001:7001 8001:9001,nop,nop>
    +0    > . 1:1001(1000) ack 1
    """)
    info = s.c.info(s.now)
    assert info.ca_state == CaState.RECOVERY and info.lost == 6
    s.run("""
    +.007 < . 1:1(0) ack 1 win 257 <sack 2001:4001 6001:7001 8001:9001,nop,nop>
    +0    > . 1001:2001(1000) ack 1
    """)
    info = s.c.info(s.now)
    assert info.lost == 5 and info.reordering == 6  # 8001:9001 -> 3001:4001 is 6 segments
    s.run("+.01 < . 1:1(0) ack 1 win 257 <sack 2001:4001 6001:7001 8001:10001,nop,nop>")
    assert s.c.info(s.now).lost == 5
    s.run("+.083 < . 1:1(0) ack 1001 win 257 <sack 2001:4001 6001:7001 8001:10001,nop,nop>")
    assert s.c.info(s.now).lost == 4
    s.run("+.017 < . 1:1(0) ack 4001 win 257 <sack 6001:7001 8001:10001,nop,nop>")
    assert s.c.info(s.now).lost == 3
    s.run("""
    +.01 < . 1:1(0) ack 7001 win 257 <sack 8001:10001,nop,nop>
    +.1  < . 1:1(0) ack 10001 win 257
    """)
    info = s.c.info(s.now)
    assert info.ca_state == CaState.OPEN
    assert (info.unacked, info.sacked, info.lost, info.retrans) == (0, 0, 0, 0)


def test_sack_shift_freebsd_profile_is_rfc6675() -> None:
    # The same SACK pattern under the freebsd profile (no RACK): IsLost needs DupThresh SACKed
    # segments above, so only 1:2001 is lost.
    s = Script(options=ConnectionOptions(profile="freebsd")).run("""
    +0    < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0    > S. 0:0(0) ack 1 <...>
    +.1   < . 1:1(0) ack 1 win 1024
    +0    write 10000
    +0    > P. 1:10001(10000) ack 1
    +.1   < . 1:1(0) ack 1 win 257 <sack 2001:3001 6001:7001 8001:9001,nop,nop>
    +0    > . 1:1001(1000) ack 1
    """)
    assert s.c.info(s.now).lost == 2


def test_shutdown_rd_close() -> None:
    # shutdown/shutdown-rd-close.pkt (Linux SHUT_RD only marks the socket: no engine call)
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   < . 1:1(0) ack 1 win 257
    +.01 read 1000 = 0
    +.01 write 1000
    +0   > P. 1:1001(1000) ack 1
    +0   < . 1:1(0) ack 1001 win 257
    +.01 close
    +0   > F. 1001:1001(0) ack 1
    +0   < . 1:1(0) ack 1002 win 257
    +.01 < F. 1:1(0) ack 1002 win 257
    +0   > . 1002:1002(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT


def test_shutdown_rd_wr_close_data_after_shut_rd_is_still_read() -> None:
    # shutdown/shutdown-rd-wr-close.pkt: on Linux, data arriving after SHUT_RD is queued, ACKed
    # and readable (so the socket layer does not call Connection.shutdown_read for linux).
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   < . 1:1(0) ack 1 win 257
    +.01 read 1000 = 0
    +0   < . 1:1001(1000) ack 1 win 257
    +0   > . 1:1(0) ack 1001
    +0   read 1000 = 1000
    +.01 write 1000
    +0   > P. 1:1001(1000) ack 1001
    +0   < . 1001:1001(0) ack 1001 win 257
    +.01 shutdown_wr
    +0   > F. 1001:1001(0) ack 1001
    +0   < . 1001:1001(0) ack 1002 win 257
    +.01 close
    +.01 < F. 1001:1001(0) ack 1002 win 257
    +0   > . 1002:1002(0) ack 1002
    """)
    assert s.c.state is TcpState.TIME_WAIT
    with pytest.raises(BrokenPipeError):
        s.c.send(b"x")


def test_shutdown_rdwr_close() -> None:
    # shutdown/shutdown-rdwr-close.pkt
    s = script().run("""
    +0   < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   < . 1:1(0) ack 1 win 257
    +.01 shutdown_wr
    +0   > F. 1:1(0) ack 1
    +0   < . 1:1(0) ack 2 win 257
    +0   read 1000 = 0
    +.01 close
    +.01 < F. 1:1(0) ack 2 win 257
    +0   > . 2:2(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT


def test_shutdown_rdwr_send_queue_ack_close_tail_loss_probe() -> None:
    # shutdown/shutdown-rdwr-send-queue-ack-close.pkt: the TLP sends new data (ignoring cwnd)
    # 2*SRTT + 2 ms after the last transmission; the FIN then rides on the last data.
    s = script().run("""
    +0    < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0    > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.001 < . 1:1(0) ack 1 win 257
    +.01  write 20000
    +0    > P. 1:10001(10000) ack 1
    +0    shutdown_wr
    +.001 < . 1:1(0) ack 1001 win 257
    +0    > P. 10001:12001(2000) ack 1
    +.004 > . 12001:13001(1000) ack 1
    +0    read 1000 = 0
    +.01  close
    +.01  < . 1:1(0) ack 13001 win 257
    +0    > FP. 13001:20001(7000) ack 1
    +0    < . 1:1(0) ack 20002 win 257
    +.01  < F. 1:1(0) ack 20002 win 257
    +0    > . 20002:20002(0) ack 2
    """)
    assert s.c.state is TcpState.TIME_WAIT and s.c.loss_probes == 1


def test_slow_start_after_win_update_uncapped_growth() -> None:
    # slow_start/slow-start-after-win-update.pkt: Linux slow start counts every ACKed segment
    # (no RFC 3465 L cap): a stretch ACK of 16 segments takes cwnd 20 -> 36. The queued data
    # waits on the zero window without an idle restart (Linux checks idleness when data is
    # queued, not while it waits), so cwnd stays 36 through the probes.
    s = script().run("""
    +0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +.1 < . 1:1(0) ack 1 win 511
    +0  setopt send_buffer=200000
    +0  write 26000
    +0  > P. 1:10001(10000) ack 1
    """)
    assert s.c.info(s.now).snd_cwnd == 10
    s.run("+.1 < . 1:1(0) ack 10001 win 511")
    assert s.c.info(s.now).snd_cwnd == 20
    s.run("""
    +0  > P. 10001:26001(16000) ack 1
    +.1 < . 1:1(0) ack 26001 win 0
    """)
    assert s.c.info(s.now).snd_cwnd == 36
    s.run("""
    +0   write 20000
    +.3  > . 26000:26000(0) ack 1
    """)
    assert s.c.info(s.now).snd_cwnd == 36
    s.run("+.6 > . 26000:26000(0) ack 1")
    assert s.c.info(s.now).snd_cwnd == 36
    s.run("+1.2 > . 26000:26000(0) ack 1")
    assert s.c.info(s.now).snd_cwnd == 36
    s.run("""
    +.9 < . 1:1(0) ack 26001 win 511
    +0  > P. 26001:31001(5000) ack 1
    """)


def test_slow_start_freebsd_caps_growth_per_ack() -> None:
    # The same stretch ACK under freebsd (net.inet.tcp.abc_l_var = 2): at most 2 MSS per ACK.
    s = Script(options=ConnectionOptions(profile="freebsd", send_buffer=200000)).run("""
    +0  < S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>
    +0  > S. 0:0(0) ack 1 <...>
    +.1 < . 1:1(0) ack 1 win 511
    +0  write 26000
    +0  > P. 1:10001(10000) ack 1
    +.1 < . 1:1(0) ack 10001 win 511
    """)
    assert s.c.cc.cwnd == 12 * 1000


def test_user_timeout_orphan_fin_probe_then_rtos() -> None:
    # user_timeout/user_timeout.pkt: after close() the FIN is probed once (TLP, capped by the
    # RTO at 2.4 s), then the RTO restarted by the probe fires at 2.7 s and backs off to 3.3 s;
    # data arriving for the closed socket draws a RST.
    s = script(window_scaling=False).run("""
    +0  < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop>
    +0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK>
    +.1 < . 1:1(0) ack 1 win 32792
    +2  setopt user_timeout=3
    +0  close
    +0  > F. 1:1(0) ack 1
    +.3 > F. 1:1(0) ack 1
    +.3 > F. 1:1(0) ack 1
    +.6 > F. 1:1(0) ack 1
    +0  < . 1:2(1) ack 1 win 32792
    +0  > R 1:1(0)
    """)
    assert s.c.state is TcpState.CLOSED and s.c.loss_probes == 1


def test_user_timeout_probe_without_sack_times_out() -> None:
    # user_timeout/user-timeout-probe.pkt drops every packet in the local qdisc, so Linux retries
    # every TCP_RESOURCE_PROBE_INTERVAL (500 ms, tcpi_probes counts them, no backoff): a
    # local-congestion path the engine cannot see (the stack owns the link). What the engine
    # shows is the rest: no SACK, so no TLP; the unacknowledged write is aborted with
    # ETIMEDOUT once TCP_USER_TIMEOUT (3 s) has passed since it was first sent.
    s = script().run("""
    +0  < S 0:0(0) win 0 <mss 1460>
    +0  > S. 0:0(0) ack 1 <mss 1460>
    +.1 < . 1:1(0) ack 1 win 65530
    +0  setopt user_timeout=3
    +0  write 24
    +0  > P. 1:25(24) ack 1
    +.1 < . 1:1(0) ack 25 win 65530
    +0  write 24
    +0  > P. 25:49(24) ack 1
    """)
    info = s.c.info(s.now)
    assert info.probes == 0 and info.backoff == 0
    s.advance(3.19)
    assert s.c.state is TcpState.ESTABLISHED and s.c.loss_probes == 0
    s.advance(3.21)  # 3 s after the second write was first sent (at 0.2 s)
    assert s.c.state is TcpState.CLOSED
    assert isinstance(s.c.error_exception(), TimeoutError)
