"""Send and receive buffer autotuning (Linux tcp_sndbuf_expand and tcp_rcv_space_adjust).

A path of 10 Mbit/s and 100 ms holds 125 kB; with the fixed 16 KiB default send buffer a flow
moved 16 KiB per RTT (1.3 Mbit/s). With buffers left to autotuning it fills the path; a buffer
the user sets (SO_SNDBUF / SO_RCVBUF) stays as set, as on Linux.
"""

from __future__ import annotations

import heapq
import random

from tcp_helpers import Bottleneck, wire_size

from tcpstack.tcp.config import LINUX, ConnectionOptions
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.receiver import Receiver
from tcpstack.tcp.state import TcpState
from tcpstack.wire.segment import TcpSegment

MASK = 0xFFFFFFFF
MBIT = 1e6 / 8  # bytes per second


def _bulk(
    options: ConnectionOptions, *, rate: float, rtt: float, duration: float, measure_from: float,
    receiver_options: ConnectionOptions | None = None, read_every: float = 0.0,
) -> tuple[int, Connection, Connection]:
    """One bulk flow over a drop-tail bottleneck (queue one BDP), ACKs on an ideal path.

    Returns the bytes the receiving application read in ``[measure_from, duration]`` and both
    connections. ``read_every`` > 0 makes the application read only that often (else at once).
    """
    bdp = int(rate * rtt)
    fwd = Bottleneck(rate=rate, delay=rtt / 2, queue_bytes=max(bdp, 30_000), rng=random.Random(7))
    sender = Connection(("198.18.0.1", 40000), ("198.18.0.2", 80), iss=0xFFFF0000, options=options)
    sender.open_active(0.0)
    receiver: Connection | None = None
    events: list[tuple[float, int, str, TcpSegment]] = []
    counter = 0
    now = 0.0
    got = 0
    next_read = 0.0
    blob = bytes(1 << 20)

    def emit(who: str, conn: Connection) -> None:
        nonlocal counter
        for seg in conn.poll_transmit(now):
            if who == "s":
                arrive = fwd.send(now, wire_size(seg))
                if arrive is None:
                    continue
            else:
                arrive = now + rtt / 2
            counter += 1
            heapq.heappush(events, (arrive, counter, "r" if who == "s" else "s", seg))

    emit("s", sender)
    while now < duration:
        cand = [events[0][0]] if events else []
        for c in (sender, receiver):
            if c is not None and (d := c.next_deadline()) is not None:
                cand.append(d)
        if read_every:
            cand.append(next_read)
        now = min(cand)
        while events and events[0][0] <= now:
            _, _, to, seg = heapq.heappop(events)
            if to == "r":
                if receiver is None:
                    receiver = Connection.from_syn(
                        seg, iss=0x12345678, options=receiver_options or options, now=now)
                else:
                    receiver.on_segment(seg, now)
            else:
                sender.on_segment(seg, now)
        if (d := sender.next_deadline()) is not None and d <= now:
            sender.on_timer(now)
        while sender.send_space and sender.state is TcpState.ESTABLISHED:
            if not sender.send(blob[: sender.send_space]):
                break
        emit("s", sender)
        if receiver is not None:
            if (d := receiver.next_deadline()) is not None and d <= now:
                receiver.on_timer(now)
            if not read_every or now >= next_read:
                next_read = now + read_every
                data = receiver.receive(1 << 30)
                if now >= measure_from:
                    got += len(data)
            emit("r", receiver)
    assert receiver is not None
    return got, sender, receiver


def test_default_buffers_fill_a_10mbit_100ms_path() -> None:
    rate, rtt = 10 * MBIT, 0.1
    got, sender, receiver = _bulk(ConnectionOptions(), rate=rate, rtt=rtt, duration=8.0,
                                  measure_from=2.0)
    goodput = got / 6.0
    assert goodput >= 0.8 * rate, f"{goodput * 8 / 1e6:.2f} Mbit/s"
    # The send buffer grew past its 16 KiB start toward two congestion windows, not without bound.
    assert LINUX.send_buffer < sender.sndbuf.capacity <= LINUX.send_buffer_max
    assert sender.sndbuf.capacity >= rate * rtt


def test_a_send_buffer_set_by_the_user_is_not_autotuned() -> None:
    """The contrast: the same path with SO_SNDBUF = 16 KiB moves about 16 KiB per RTT."""
    rate, rtt = 10 * MBIT, 0.1
    opts = ConnectionOptions(send_buffer=16384)
    got, sender, _ = _bulk(opts, rate=rate, rtt=rtt, duration=5.0, measure_from=1.0,
                           receiver_options=ConnectionOptions())
    assert sender.sndbuf.capacity == 16384
    per_rtt = got / 4.0 * rtt
    assert per_rtt <= 16384 * 1.1, per_rtt
    assert got / 4.0 < 0.25 * rate


def test_set_options_send_buffer_ends_autotuning() -> None:
    conn = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=1)
    assert conn.sndbuf_auto and conn.rcv.autotune_max == LINUX.receive_buffer_max
    conn.set_options(send_buffer=20000, receive_buffer=50000)
    assert not conn.sndbuf_auto and conn.rcv.autotune_max == 0
    conn.cc.cwnd = 100 * conn.mss_cache
    conn._sndbuf_expand()  # would grow an autotuned buffer; the caller checks the lock
    assert conn.sndbuf.capacity == 2 * 100 * conn.mss_cache  # the expansion rule itself
    conn2 = Connection(("198.18.0.1", 1001), ("198.18.0.2", 80), iss=1,
                       options=ConnectionOptions(send_buffer=20000, receive_buffer=50000))
    assert not conn2.sndbuf_auto and conn2.rcv.autotune_max == 0


def test_send_buffer_expansion_is_capped_at_send_buffer_max() -> None:
    conn = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=1)
    conn.cc.cwnd = 100_000 * conn.mss_cache
    conn._sndbuf_expand()
    assert conn.sndbuf.capacity == LINUX.send_buffer_max
    small = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=1)
    small.mss_cache = 1448
    small.cc.cwnd = 4 * 1448
    small._sndbuf_expand()  # cwnd is the initial window: room for two of them
    assert small.sndbuf.capacity == 2 * LINUX.initial_window_segments * small.mss_cache


def test_receive_buffer_grows_with_what_the_application_reads_per_rtt() -> None:
    """Dynamic right-sizing: a 40 Mbit/s x 100 ms path (500 kB) needs more than the 128 KiB
    default receive buffer; it grows, bounded by receive_buffer_max; a set one does not."""
    rate, rtt = 40 * MBIT, 0.1
    opts = ConnectionOptions(mtu=9000)
    got, _, receiver = _bulk(opts, rate=rate, rtt=rtt, duration=5.0, measure_from=2.0)
    assert LINUX.receive_buffer < receiver.rcv.capacity <= LINUX.receive_buffer_max
    assert receiver.rcv.capacity >= rate * rtt
    assert got / 3.0 >= 0.8 * rate, f"{got / 3.0 * 8 / 1e6:.2f} Mbit/s"

    fixed = ConnectionOptions(mtu=9000, receive_buffer=LINUX.receive_buffer)
    got_fixed, _, receiver_fixed = _bulk(opts, rate=rate, rtt=rtt, duration=5.0,
                                         measure_from=2.0, receiver_options=fixed)
    assert receiver_fixed.rcv.capacity == LINUX.receive_buffer
    # A 128 KiB window per 100 ms RTT is at most ~10.5 Mbit/s.
    assert got_fixed / 3.0 <= LINUX.receive_buffer / rtt * 1.05


def test_space_adjust_follows_linux_drs_formula() -> None:
    rcv = Receiver(capacity=131072, rcv_wscale=7, advmss=1448, max_ooo_bytes=131072,
                   max_ooo_ranges=64, ato_min=0.04)
    rcv.autotune_max = 6 << 20
    rcv.start(1000, 0.0)
    rcv.rcv_rtt = 0.1
    space = rcv.rcv_space
    copied = 2 * space
    rcv.on_data(rcv.rcv_nxt, bytes(copied), False, 0.05)
    assert rcv.read(copied, 0.2) == bytes(copied)  # one receive RTT has passed
    rcvwin = 2 * copied + 16 * 1448
    rcvwin += 2 * (rcvwin * (copied - space) // space)
    assert rcv.capacity == max(131072, min(rcvwin, 6 << 20))
    assert rcv.capacity > 131072
    assert rcv.rcv_space == copied
    # The out-of-order bound was the buffer: it follows, so data the larger window invites is
    # not dropped after being SACKed (a reneging sender would stall on it).
    assert rcv.ooo_max_bytes == rcv.capacity
    # No growth when the application read no more than in the previous RTT.
    before = rcv.capacity
    rcv.on_data(rcv.rcv_nxt, bytes(copied), False, 0.25)
    rcv.read(copied, 0.35)
    assert rcv.capacity == before
