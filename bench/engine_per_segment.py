"""Per-segment cost of the sans-IO engine (no codec, no I/O): receive and send paths.

Run: .venv/bin/python bench/engine_per_segment.py [--cpu] [segments]

receive: a connection in ESTABLISHED is fed in-order 1448-byte data segments (on_segment), the
  application reads, and poll_transmit collects the ACKs (one per two segments) - per segment.
send: the application writes, poll_transmit emits 1448-byte segments, and the peer's ACKs (one
  per two segments) are processed with on_segment - per data segment sent.
"""

from __future__ import annotations

import sys
import time

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.connection import Connection
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment, Timestamps

MASK = 0xFFFFFFFF
# Wall time by default; --cpu: process CPU time, the figure to compare on a machine shared with
# other work (it excludes time the process waited for a CPU).
CLOCK = time.perf_counter
OPTS = ConnectionOptions(send_buffer=8 << 20, receive_buffer=8 << 20)


def pair() -> tuple[Connection, Connection, float]:
    a = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=0xFFFF0000, options=OPTS)
    a.open_active(0.0)
    syn = a.poll_transmit(0.0)[0]
    b = Connection.from_syn(syn, iss=0x12345678, options=OPTS, now=0.001)
    synack = b.poll_transmit(0.001)[0]
    a.on_segment(synack, 0.002)
    for seg in a.poll_transmit(0.002):
        b.on_segment(seg, 0.003)
    b.poll_transmit(0.003)
    return a, b, 0.003


def bench_receive(n: int) -> float:
    a, b, now = pair()
    payload = bytes(1448)
    ts = a.ts_ok
    seq = a.snd_nxt
    segs = []
    for i in range(n):
        opts = TcpOptions(timestamps=Timestamps(a._tsval(0.003) + i, 0)) if ts else TcpOptions()
        segs.append(TcpSegment("198.18.0.1", "198.18.0.2", 1000, 80, (seq + i * 1448) & MASK,
                               (b.snd_nxt) & MASK, TcpFlags.ACK, 65535, 0, opts, payload))
    t0 = CLOCK()
    for i, seg in enumerate(segs):
        now += 0.00001
        b.on_segment(seg, now)
        if i & 1:
            b.receive(1 << 20)
            b.poll_transmit(now)
    dt = CLOCK() - t0
    assert b.rcv.bytes_received == n * 1448
    return dt / n * 1e6


def bench_send(n: int) -> float:
    a, b, now = pair()
    data = memoryview(bytes(1448 * n))
    peer_seq = b.snd_nxt & MASK
    t0 = CLOCK()
    off = a.send(data)
    sent = 0
    acked = a.snd_una
    while sent < n:
        now += 0.00001
        segs = a.poll_transmit(now)
        sent += sum(1 for s in segs if s.payload)
        if a.snd_nxt > acked:  # the peer ACKs every second segment (or what is left)
            acked = min(acked + 2 * 1448, a.snd_nxt)
            opts = (TcpOptions(timestamps=Timestamps(b._tsval(now), a._tsval(now))) if a.ts_ok
                    else TcpOptions())
            ack = TcpSegment("198.18.0.2", "198.18.0.1", 80, 1000, peer_seq, acked & MASK,
                             TcpFlags.ACK, 65535, 0, opts)
            a.on_segment(ack, now)
        if off < len(data):
            off += a.send(data[off:])
    dt = CLOCK() - t0
    return dt / n * 1e6


def main() -> None:
    global CLOCK
    args = sys.argv[1:]
    if "--cpu" in args:
        args.remove("--cpu")
        CLOCK = time.process_time
    n = int(args[0]) if args else 50_000
    bench_receive(2000)
    bench_send(2000)
    rx = min(bench_receive(n) for _ in range(3))
    tx = min(bench_send(n) for _ in range(3))
    clock = "CPU time" if CLOCK is time.process_time else "wall time"
    print(f"receive: {rx:.1f} us/segment   send: {tx:.1f} us/segment   ({n} segments, best of 3, "
          f"{clock})")


if __name__ == "__main__":
    main()
