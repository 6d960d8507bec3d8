"""Microbenchmark of the wire codec beside dpkt: build and parse of TCP/IPv4 packets.

Prints microseconds per operation for 0 B and 1460 B payloads, without options and with the
timestamps option of an established connection, and the internet checksum of 1460 B.

    python bench/wire.py            # table
    python bench/wire.py --json     # one JSON object

Each figure is the best of several repeats (the least disturbed by other processes), so on a
loaded machine run it twice and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import sys
import timeit
from collections.abc import Callable
from functools import partial

import dpkt

from tcpstack.wire import (
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    build_packet,
    internet_checksum,
    parse_packet,
)

REPEATS = 15
TARGET_SECONDS = 0.02  # per repeat


def best_us(func: Callable[[], object]) -> float:
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    number = max(1, int(number * TARGET_SECONDS / 0.2))
    return min(timer.repeat(repeat=REPEATS, number=number)) / number * 1e6


def make_segment(payload_len: int, with_ts: bool) -> TcpSegment:
    rng = random.Random(payload_len)
    return TcpSegment(
        src="198.18.0.1", dst="198.18.0.2", sport=40000, dport=443, seq=rng.getrandbits(32),
        ack=rng.getrandbits(32), flags=TcpFlags.ACK | TcpFlags.PSH, window=501,
        options=TcpOptions(timestamps=Timestamps(123456, 654321)) if with_ts else TcpOptions(),
        payload=rng.randbytes(payload_len),
    )


def dpkt_build(segment: TcpSegment) -> Callable[[], bytes]:
    src, dst = socket.inet_aton(segment.src), socket.inet_aton(segment.dst)
    opts = b""
    if segment.options.timestamps is not None:
        opts = b"\x01\x01\x08\x0a" + segment.options.timestamps.tsval.to_bytes(4, "big") + \
            segment.options.timestamps.tsecr.to_bytes(4, "big")

    def build() -> bytes:
        tcp = dpkt.tcp.TCP(sport=segment.sport, dport=segment.dport, seq=segment.seq,
                           ack=segment.ack, flags=int(segment.flags), win=segment.window,
                           opts=opts, data=segment.payload)
        tcp.off = (20 + len(opts)) // 4
        ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=segment.ttl, id=segment.ip_id, data=tcp)
        ip.df = 1
        ip.len = 20 + len(tcp)
        return bytes(ip)

    return build


def run() -> dict[str, object]:
    results: dict[str, object] = {}
    for payload_len in (0, 1460):
        for with_ts in (False, True):
            segment = make_segment(payload_len, with_ts)
            packet = build_packet(segment)
            build = dpkt_build(segment)
            assert build() == packet, "dpkt and the codec disagree on the bytes"
            assert parse_packet(packet) == segment
            key = f"{payload_len}B" + ("+ts" if with_ts else "")
            results[key] = {
                "build_us": best_us(partial(build_packet, segment)),
                "build_nocsum_us": best_us(partial(build_packet, segment, checksum=False)),
                "parse_us": best_us(partial(parse_packet, packet)),
                "parse_noverify_us": best_us(partial(parse_packet, packet, verify_checksum=False)),
                "dpkt_build_us": best_us(build),
                "dpkt_parse_us": best_us(partial(dpkt.ip.IP, packet)),
            }
    data = random.Random(1).randbytes(1460)
    results["checksum_1460B_us"] = best_us(lambda: internet_checksum(data))
    results["python"] = sys.version.split()[0]
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = run()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"python {results['python']}, {results['machine']}; best of {REPEATS}, microseconds")
    header = ("case", "build", "build -csum", "parse", "parse -verify", "dpkt build", "dpkt parse")
    print("{:<10} {:>8} {:>12} {:>8} {:>14} {:>11} {:>11}".format(*header))
    for key, row in results.items():
        if isinstance(row, dict):
            print("{:<10} {:>8.2f} {:>12.2f} {:>8.2f} {:>14.2f} {:>11.2f} {:>11.2f}".format(
                key, row["build_us"], row["build_nocsum_us"], row["parse_us"],
                row["parse_noverify_us"], row["dpkt_build_us"], row["dpkt_parse_us"]))
    print(f"internet_checksum(1460 B): {results['checksum_1460B_us']:.2f} us")


if __name__ == "__main__":
    main()
