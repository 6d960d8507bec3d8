"""A send buffer with views on (as the stack sets it) emits the same packets without copying
each payload out of the application's data first."""

from __future__ import annotations

import attrs
from tcp_helpers import ISS, MASK, Script

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.wire import build_packet, parse_packet
from tcpstack.wire.segment import TcpSegment, Timestamps

OPEN = """
+0  < S 0:0(0) win 65535 <mss 1000,sackOK,TS val 100 ecr 0,nop,wscale 7>
+0  > S. 0:0(0) ack 1 <...>
+.1 < . 1:1(0) ack 1 win 2000 <nop,nop,TS val 200 ecr 1>
"""


def _send(views: bool, app: bytes) -> list[TcpSegment]:
    s = Script(options=ConnectionOptions(send_buffer=1 << 20)).run(OPEN)
    s.c.sndbuf.views = views
    assert s.c.send(memoryview(app)) == len(app)  # a read-only view of bytes, as send_all
    segs = s.c.poll_transmit(s.now)
    deadline = s.c.next_deadline()
    assert deadline is not None
    s.c.on_timer(deadline)  # the loss probe: the last segment goes again, from the same buffer
    return segs + s.c.poll_transmit(deadline)


def test_views_build_the_same_packets_and_reference_the_application_data() -> None:
    app = bytes(i * 7 % 251 for i in range(9880))  # ten segments of 988 (MSS less TS)
    copied = _send(False, app)
    viewed = _send(True, app)
    assert len(viewed) == 11  # the initial window of ten segments, then one retransmission
    assert viewed[-1].seq == viewed[9].seq
    assert [build_packet(seg) for seg in viewed] == [build_packet(seg) for seg in copied]
    assert all(type(seg.payload) is bytes for seg in copied)
    for seg in viewed:
        payload = seg.payload
        assert isinstance(payload, memoryview) and payload.obj is app and payload.readonly
        # The packet carries the application's bytes at the segment's offset.
        offset = (seg.seq - ISS - 1) & MASK
        parsed = parse_packet(build_packet(seg))
        assert isinstance(parsed, TcpSegment)
        assert parsed.payload == app[offset:offset + len(payload)] and len(payload) == 988


def test_build_reuses_an_options_encoding_only_for_the_same_object() -> None:
    base = _send(False, bytes(988))[0]
    first = base.options
    assert first.timestamps is not None
    other = attrs.evolve(first, timestamps=Timestamps(first.timestamps.tsval + 1, 7))
    equal_copy = attrs.evolve(first)  # equal, another object: encoded on its own, same bytes
    for options in (first, first, other, first, equal_copy, other):
        seg = attrs.evolve(base, options=options)
        parsed = parse_packet(build_packet(seg))
        assert isinstance(parsed, TcpSegment) and parsed.options == options
        assert parsed.options.timestamps == options.timestamps
