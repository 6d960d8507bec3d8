"""What an idle connection holds (issue 4): its empty buffers, scoreboard and out-of-order queue
share one empty container each instead of owning one, so connect and accept allocate fewer
objects and the garbage collector walks fewer per open connection. Each gets its own container
when it needs one and lets it go when it is empty again."""

from __future__ import annotations

import pytest
from tcp_helpers import Impairments, VirtualNetwork

from tcpstack.tcp import Connection
from tcpstack.tcp.buffers import _NO_DATA
from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.reassembly import NO_OOO
from tcpstack.tcp.scoreboard import NO_RECORDS
from tcpstack.tcp.state import TcpState
from tcpstack.tcp.timers import _NONE_SET, TK_DELACK, TK_RETRANSMIT, Timers
from tcpstack.wire.segment import TcpFlags, TcpSegment


def _shares_every_empty(conn: Connection) -> bool:
    return (
        conn.sndbuf._chunks is _NO_DATA
        and conn.sndbuf._starts is _NO_DATA
        and conn.rcv._buf._chunks is _NO_DATA
        and conn.sb._recs is NO_RECORDS
        and conn.rcv.ooo is NO_OOO
        and conn.timers._deadlines is _NONE_SET
    )


def _established(seed: int = 1, loss: float = 0.0) -> VirtualNetwork:
    net = VirtualNetwork(seed=seed, impairments=Impairments(loss=loss, delay=0.01))
    while net.server is None or net.server.state is not TcpState.ESTABLISHED or (
        net.client.state is not TcpState.ESTABLISHED
    ):
        assert net.step()
    while net.step():  # the handshake's last ACK and any timers
        pass
    return net


def test_a_new_and_an_established_idle_connection_own_no_containers() -> None:
    fresh = Connection(("198.18.0.1", 40000), ("198.18.0.2", 80), iss=1,
                       options=ConnectionOptions())
    assert _shares_every_empty(fresh)
    net = _established()
    for conn in net.conns():
        assert _shares_every_empty(conn), conn
    assert _NO_DATA == [] and NO_RECORDS == [] and NO_OOO.bytes_held == 0


def test_a_transfer_gets_its_own_containers_and_gives_them_back() -> None:
    net = _established()
    client, server = net.client, net.server
    assert server is not None
    data = bytes(range(256)) * 400  # 100 KiB
    offset = net.pump(client, data, 0)
    assert client.sndbuf._chunks is not _NO_DATA  # queued data: the buffer's own list
    assert client.sndbuf._chunks is not client.sndbuf._starts
    got = bytearray()
    for _ in range(100_000):
        offset = net.pump(client, data, offset)
        got += server.receive(1 << 20)
        if not net.step() and offset == len(data):
            break
    got += server.receive(1 << 20)
    assert bytes(got) == data
    # Everything acknowledged and read: the shared empties again, nothing held per connection.
    for conn in net.conns():
        assert conn.sndbuf._chunks is _NO_DATA and conn.sb._recs is NO_RECORDS, conn
        assert conn.rcv._buf._chunks is _NO_DATA, conn
    assert _NO_DATA == [] and NO_RECORDS == []


def test_out_of_order_data_gets_a_queue_with_the_receivers_bounds() -> None:
    options = ConnectionOptions(max_ooo_bytes=3000, max_ooo_ranges=2)
    syn = TcpSegment(src="198.18.0.2", dst="198.18.0.1", sport=5000, dport=80, seq=100,
                     ack=0, flags=TcpFlags.SYN, window=65535)
    conn = Connection.from_syn(syn, iss=7, options=options, now=0.0)
    conn.poll_transmit(0.0)
    conn.on_segment(TcpSegment(src="198.18.0.2", dst="198.18.0.1", sport=5000, dport=80,
                               seq=101, ack=8, flags=TcpFlags.ACK, window=65535), 0.01)
    assert conn.state is TcpState.ESTABLISHED and conn.rcv.ooo is NO_OOO
    assert conn.rcv.ooo_max_bytes == 3000
    # A segment beyond a hole: the receiver's own queue, with the bounds it was given.
    conn.on_segment(TcpSegment(src="198.18.0.2", dst="198.18.0.1", sport=5000, dport=80,
                               seq=201, ack=8, flags=TcpFlags.ACK, window=65535,
                               payload=b"x" * 100), 0.02)
    ooo = conn.rcv.ooo
    assert ooo is not NO_OOO
    assert (ooo.max_bytes, ooo.max_ranges, ooo.bytes_held) == (3000, 2, 100)
    assert NO_OOO.bytes_held == 0 and NO_OOO.ranges == []
    # The hole filled: both pieces are delivered in order.
    conn.on_segment(TcpSegment(src="198.18.0.2", dst="198.18.0.1", sport=5000, dport=80,
                               seq=101, ack=8, flags=TcpFlags.ACK, window=65535,
                               payload=b"y" * 100), 0.03)
    assert conn.receive(1000) == b"y" * 100 + b"x" * 100


def test_the_shared_out_of_order_queue_refuses_data() -> None:
    with pytest.raises(RuntimeError, match="NO_OOO"):
        NO_OOO.add(10, b"data", 0)
    assert NO_OOO.bytes_held == 0


def test_timers_own_a_list_only_while_one_is_set() -> None:
    timers = Timers()
    assert timers._deadlines is _NONE_SET
    timers.cancel(TK_RETRANSMIT)  # nothing set: nothing written
    timers.set(TK_RETRANSMIT, 1.0)
    timers.set(TK_DELACK, 0.5)
    assert timers._deadlines is not _NONE_SET and timers.earliest() == 0.5
    timers.cancel(TK_DELACK)
    assert timers.earliest() == 1.0 and timers._deadlines is not _NONE_SET
    assert timers.pop_due(1.0) == [TK_RETRANSMIT]
    assert timers._deadlines is _NONE_SET and timers.earliest() is None
    assert _NONE_SET == [None] * len(_NONE_SET)
