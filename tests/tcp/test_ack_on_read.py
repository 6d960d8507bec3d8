"""The every-second-segment ACK waits for the application's read when unread data holds the
window back (Linux __tcp_ack_snd_check's window condition and tcp_cleanup_rbuf)."""

from __future__ import annotations

from tcp_helpers import Script

from tcpstack.tcp.config import ConnectionOptions

# No window scaling and a 20000-byte buffer: every window field is exact.
OPEN = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK>
+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK>
+.1 < . 1:1(0) ack 1 win 65535
"""


def _past_quickack(s: Script) -> int:
    """Send and read 30 segments: quick-ACK mode is over and rcv_ssthresh is the buffer."""
    seq = 1
    for _ in range(30):
        s.line(f"+.001 < . {seq}:{seq + 1000}(1000) ack 1 win 65535")
        s.c.receive(1 << 20)
        seq += 1000
    s.advance(s.now + 0.1)  # any delayed ACK out
    s.out.clear()
    return seq


def test_growing_window_gets_an_ack_every_second_segment_unread() -> None:
    # A 1 MiB buffer: the window is rcv_ssthresh, which each in-order segment raises, so the
    # right edge advances with no read at all and the second segment is ACKed at once.
    s = Script(options=ConnectionOptions(receive_buffer=1 << 20)).run(
        OPEN.replace("sackOK>\n+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK>",
                     "sackOK,nop,wscale 7>\n+0  > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 5>"))
    seq = _past_quickack(s)
    s.run(f"""
    +.001 < . {seq}:{seq + 1000}(1000) ack 1 win 512
    +0    none
    +.001 < . {seq + 1000}:{seq + 2000}(1000) ack 1 win 512
    +0    > . 1:1(0) ack {seq + 2000}
    """)
    assert s.c.rcv.rcv_ssthresh < s.c.rcv.capacity


def _two_segments_unread() -> tuple[Script, int]:
    """Past quick ACKs, two full segments in and none read: the second is not ACKed at once
    (the window announced now would end where the last one ended, only shrunken)."""
    s = Script(options=ConnectionOptions(receive_buffer=20000, window_scaling=False)).run(OPEN)
    seq = _past_quickack(s)
    s.run(f"""
    +.001 < . {seq}:{seq + 1000}(1000) ack 1 win 65535
    +.001 < . {seq + 1000}:{seq + 2000}(1000) ack 1 win 65535
    +0    none
    """)
    return s, seq


def test_unread_data_defers_the_ack_to_the_next_read() -> None:
    s, seq = _two_segments_unread()
    # Nothing read: a third segment is not ACKed at once either ...
    s.run(f"""
    +.001 < . {seq + 2000}:{seq + 3000}(1000) ack 1 win 65535
    +0    none
    """)
    # ... the read sends it, with the window the read opened.
    s.run(f"""
    +.005 read 3000
    +0    > . 1:1(0) ack {seq + 3000} win 20000
    """)


def test_deferred_ack_still_leaves_on_the_delayed_ack_timer() -> None:
    s, seq = _two_segments_unread()
    s.run(f"""
    +.039 > . 1:1(0) ack {seq + 2000} win 18000
    """)
