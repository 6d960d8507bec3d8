"""Property: two engines over a lossy, reordering, duplicating, delaying channel deliver both byte
streams intact and both reach CLOSED or TIME-WAIT; no deadline is ever in the past; buffers and
queues never exceed their configured bounds."""

from __future__ import annotations

import random

from example_budget import scaled_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import Impairments, VirtualNetwork

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.state import TcpState

BUF = 16384


def transfer(seed: int, loss: float, dup: float, reorder: float, sack: bool, ts: bool,
             n_up: int, n_down: int, gso_max_size: int = 0) -> VirtualNetwork:
    opts = ConnectionOptions(sack=sack, timestamps=ts, send_buffer=BUF, receive_buffer=BUF,
                             time_wait=5.0)
    net = VirtualNetwork(
        seed=seed,
        impairments=Impairments(loss=loss, duplicate=dup, reorder=reorder, delay=0.01,
                                jitter=0.004),
        client_options=opts, server_options=opts, gso_max_size=gso_max_size,
    )
    rng = random.Random(seed)
    up = rng.randbytes(n_up)
    down = rng.randbytes(n_down)
    o_up = o_down = 0
    got_up = bytearray()
    got_down = bytearray()
    shut_c = shut_s = False
    for _ in range(400_000):
        if not net.step():
            break
        c, s = net.client, net.server
        o_up = net.pump(c, up, o_up)
        got_down += c.receive(1 << 20)
        if o_up == len(up) and not shut_c and c.state in (TcpState.ESTABLISHED,
                                                          TcpState.CLOSE_WAIT):
            c.shutdown_write()
            shut_c = True
        if s is not None:
            o_down = net.pump(s, down, o_down)
            got_up += s.receive(1 << 20)
            if o_down == len(down) and not shut_s and s.state in (TcpState.ESTABLISHED,
                                                                  TcpState.CLOSE_WAIT):
                s.shutdown_write()
                shut_s = True
        # Memory bounds hold at every step.
        for conn in net.conns():
            assert len(conn.sndbuf) <= BUF
            assert conn.rcv.readable + conn.rcv.ooo.bytes_held <= BUF
            assert len(conn.rcv.ooo.ranges) <= 64
            assert len(conn.events) <= 4096
    assert net.server is not None
    assert bytes(got_up) == up
    assert bytes(got_down) == down
    for conn in net.conns():
        assert conn.state in (TcpState.CLOSED, TcpState.TIME_WAIT), conn.state
        assert conn.error is None
    assert net.deadline_violations == []
    return net


@settings(max_examples=scaled_examples(120))
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.05, 0.15, 0.3]),
    dup=st.sampled_from([0.0, 0.05]),
    reorder=st.sampled_from([0.0, 0.1, 0.3]),
    sack=st.booleans(),
    ts=st.booleans(),
    n_up=st.integers(0, 40_000),
    n_down=st.integers(0, 12_000),
)
def test_streams_survive_impairments(seed: int, loss: float, dup: float, reorder: float,
                                     sack: bool, ts: bool, n_up: int, n_down: int) -> None:
    transfer(seed, loss, dup, reorder, sack, ts, n_up, n_down)


def test_heavy_loss_exercises_recovery_paths() -> None:
    # One fixed hard case: 30% loss both ways, SACK and timestamps on.
    net = transfer(7, 0.3, 0.05, 0.3, True, True, 60_000, 20_000)
    total_rto = sum(c.total_rto for c in net.conns())
    total_retrans = sum(c.total_retrans for c in net.conns())
    assert total_rto > 0 and total_retrans > total_rto


@settings(max_examples=scaled_examples(60))
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.05, 0.15, 0.3]),
    reorder=st.sampled_from([0.0, 0.1, 0.3]),
    sack=st.booleans(),
    ts=st.booleans(),
    n_up=st.integers(0, 60_000),
    n_down=st.integers(0, 12_000),
)
def test_streams_survive_impairments_with_tso(seed: int, loss: float, reorder: float,
                                              sack: bool, ts: bool, n_up: int,
                                              n_down: int) -> None:
    # Super-segments cut into MTU-sized packets by the channel, each lost on its own: partial
    # loss of a super-segment must be repaired piece by piece.
    transfer(seed, loss, 0.02, reorder, sack, ts, n_up, n_down, gso_max_size=65535)


def test_tso_transfer_uses_super_segments_and_repairs_partial_losses() -> None:
    net = transfer(11, 0.05, 0.0, 0.1, True, True, 60_000, 5_000, gso_max_size=65535)
    assert net.super_segments > 0
    client = net.client
    # Pieces of super-segments were lost and retransmitted one MSS at a time.
    assert client.total_retrans > 0
    assert client.bytes_retrans <= client.total_retrans * client.mss_cache
