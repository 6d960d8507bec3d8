"""Microbenchmark of the wire codec beside dpkt: build and parse of TCP/IPv4 packets.

Prints microseconds per operation for 0 B and 1460 B payloads, without options and with the
timestamps option of an established connection, and the internet checksum of 1460 B.

    python bench/wire.py            # table
    python bench/wire.py --json     # one JSON object

    python bench/wire.py --breakdown   # where the time of parse_packet(1460 B) goes

Each figure is the best of several repeats (the least disturbed by other processes), so on a
loaded machine run it twice and compare. Calls are timed as compiled statements, the way the stack
makes them (``parse_packet(packet, verify_checksum=False)``): wrapping them in ``functools.partial``
with a keyword argument would add ~0.15-0.2 us of harness overhead per call on this machine kind.

``--breakdown`` times, for the 1460 B segment, the parts no pure-Python parser producing a
:class:`TcpSegment` can avoid (the call, one struct call, the payload copy, allocating the value
and storing its 15 slots) separately and together as a "skeleton" parser that does only those and
no validation at all; the rest of ``parse_packet`` is the validation and normalisation it adds.
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
from typing import Any

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
from tcpstack.wire._fast import _MutableSegment
from tcpstack.wire.codec import _PARSE

REPEATS = 40
TARGET_SECONDS = 0.005  # per repeat: many short samples find the quiet moments of a busy machine


def best_us(stmt: str | Callable[[], object], **names: object) -> float:
    """Best time of ``stmt`` (compiled with ``names`` as its globals) in microseconds."""
    timer = timeit.Timer(stmt, globals=names)
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
            names: dict[str, Any] = dict(
                build_packet=build_packet, parse_packet=parse_packet, segment=segment,
                packet=packet, dpkt_build=build, IP=dpkt.ip.IP,
            )
            results[key] = {
                "build_us": best_us("build_packet(segment)", **names),
                "build_nocsum_us": best_us("build_packet(segment, checksum=False)", **names),
                "parse_us": best_us("parse_packet(packet)", **names),
                "parse_noverify_us": best_us("parse_packet(packet, verify_checksum=False)", **names),
                "dpkt_build_us": best_us("dpkt_build()", **names),
                "dpkt_parse_us": best_us("IP(packet)", **names),
            }
    data = random.Random(1).randbytes(1460)
    results["checksum_1460B_us"] = best_us("internet_checksum(data)", internet_checksum=internet_checksum, data=data)
    results["python"] = sys.version.split()[0]
    results["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}"
    return results


def _noop(buf: bytes, *, verify_checksum: bool = True) -> None:
    return None


def _skeleton(buf: bytes, *, verify_checksum: bool = True) -> TcpSegment:
    """The least any pure-Python parse to a TcpSegment does: no validation, no normalisation."""
    (_vihl, tos, total_len, ip_id, frag_hi, _frag_lo, ttl, _protocol, flow_key, seq, ack,
     flags, window, urgent) = _PARSE.unpack_from(buf)
    payload = buf[40:total_len]
    self: Any = _MutableSegment()
    self.src = flow_key
    self.dst = flow_key
    self.sport = flags
    self.dport = flags
    self.seq = seq
    self.ack = ack
    self.flags = flags
    self.window = window
    self.urgent = urgent
    self.options = flags
    self.payload = payload
    self.ttl = ttl
    self.tos = tos
    self.ip_id = ip_id
    self.df = frag_hi
    self.__class__ = TcpSegment
    segment: TcpSegment = self
    return segment


_ALLOCATE_AND_STORE = """
self = Builder()
self.src = a; self.dst = a; self.sport = a; self.dport = a; self.seq = a; self.ack = a
self.flags = a; self.window = a; self.urgent = a; self.options = a; self.payload = a; self.ttl = a
self.tos = a; self.ip_id = a; self.df = a
self.__class__ = TcpSegment
"""


def breakdown() -> dict[str, float]:
    packet = build_packet(make_segment(1460, False))
    names: dict[str, Any] = dict(
        packet=packet, noop=_noop, skeleton=_skeleton, parse_packet=parse_packet,
        unpack_from=_PARSE.unpack_from, Builder=_MutableSegment, TcpSegment=TcpSegment, a=1,
    )
    parts = {
        "call with a keyword (no-op function)": "noop(packet, verify_checksum=False)",
        f"struct unpack_from, {len(_PARSE.unpack_from(packet))} fields": "fields = unpack_from(packet)",
        "payload copy, 1460 B": "payload = packet[40:1500]",
        "allocate, 15 slot stores, class switch": _ALLOCATE_AND_STORE,
        "skeleton parser (the above, no checks)": "skeleton(packet, verify_checksum=False)",
        "parse_packet(packet, verify_checksum=False)": "parse_packet(packet, verify_checksum=False)",
    }
    return {label: best_us(stmt, **names) for label, stmt in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--breakdown", action="store_true", help="where parse_packet's time goes")
    args = parser.parse_args()
    if args.breakdown:
        figures = breakdown()
        print(f"python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}; best of {REPEATS}, us")
        for label, us in figures.items():
            print(f"  {label:<46} {us:6.3f}")
        labels = list(figures)
        print(f"  {'validation and normalisation (difference)':<46} "
              f"{figures[labels[-1]] - figures[labels[-2]]:6.3f}")
        return
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
