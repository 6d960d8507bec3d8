"""SYN cookies: the codec (tcpstack.isn) and the listener that falls back on them when its SYN
queue is full, as Linux does with net.ipv4.tcp_syncookies = 1."""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from stack_helpers import A, B, payload

from tcpstack import open_stack
from tcpstack.api import TCPStream
from tcpstack.isn import (
    COOKIE_MSS_TABLE,
    SynCookies,
    cookie_mss_index,
    cookie_tsval,
    decode_cookie_options,
    encode_cookie_options,
)
from tcpstack.links import MemoryNetwork
from tcpstack.links.memory import MemoryLink
from tcpstack.tcp.state import TcpiOption, TcpState
from tcpstack.wire import build_packet, parse_packet
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment, Timestamps

C = "198.18.0.3"  # a raw port: SYNs from here are never completed

# -- codec ---------------------------------------------------------------------------------------


@given(
    peer_port=st.integers(1, 65535), local_port=st.integers(1, 65535),
    peer_isn=st.integers(0, 2**32 - 1), index=st.integers(0, len(COOKIE_MSS_TABLE) - 1),
    now=st.floats(0, 1e7),
)
def test_cookie_round_trip(peer_port: int, local_port: int, peer_isn: int, index: int,
                           now: float) -> None:
    cookies = SynCookies(B, b"k" * 32)
    cookie = cookies.make(A, peer_port, local_port, peer_isn, index, now)
    assert cookies.check(A, peer_port, local_port, peer_isn, cookie, now) == index
    # Still valid in the next minute, not two minutes on (Linux MAX_SYNCOOKIE_AGE).
    assert cookies.check(A, peer_port, local_port, peer_isn, cookie, now + 60) == index
    assert cookies.check(A, peer_port, local_port, peer_isn, cookie, now + 121) is None


def test_cookie_rejects_other_tuples_and_forgeries() -> None:
    cookies = SynCookies(B, b"k" * 32)
    cookie = cookies.make(A, 40000, 80, 12345, 3, 100.0)
    assert cookies.check(A, 40001, 80, 12345, cookie, 100.0) is None
    assert cookies.check(A, 40000, 81, 12345, cookie, 100.0) is None
    # The peer's ISN is added in (Linux's layout), so only a nearby one could alias.
    assert cookies.check(A, 40000, 80, 12345 + 100_000, cookie, 100.0) is None
    assert cookies.check(C, 40000, 80, 12345, cookie, 100.0) is None
    assert SynCookies(B, b"j" * 32).check(A, 40000, 80, 12345, cookie, 100.0) is None
    rng = random.Random(1)
    accepted = sum(
        cookies.check(A, 40000, 80, 12345, rng.getrandbits(32), 100.0) is not None
        for _ in range(2000)
    )
    # A random guess passes with probability ~ 2 ages * 4 indices / 2**32.
    assert accepted == 0


def test_mss_index_rounds_down() -> None:
    assert [cookie_mss_index(m) for m in (100, 536, 1299, 1300, 1459, 1460, 9000)] == [
        0, 0, 0, 1, 2, 3, 3
    ]


@given(ts_now=st.integers(0, 2**32 - 1), wscale=st.one_of(st.none(), st.integers(0, 14)),
       sack=st.booleans(), ecn=st.booleans())
def test_timestamp_carries_options(ts_now: int, wscale: int | None, sack: bool, ecn: bool) -> None:
    bits = encode_cookie_options(wscale, sack, ecn)
    ts = cookie_tsval(ts_now, bits)
    assert decode_cookie_options(ts) == (wscale, sack, ecn)
    assert 0 <= (ts_now - ts) & 0xFFFFFFFF < 64  # never ahead of the clock, at most 64 ms behind


# -- the listener --------------------------------------------------------------------------------


def _syn(sport: int, dport: int, seq: int) -> TcpSegment:
    return TcpSegment(
        src=C, dst=B, sport=sport, dport=dport, seq=seq, flags=TcpFlags.SYN, window=65535,
        options=TcpOptions(mss=1460, sack_permitted=True, wscale=7,
                           timestamps=Timestamps(1000, 0)),
    )


async def _fill_syn_queue(raw: MemoryLink, port: int, n: int) -> None:
    raw.send_batch([build_packet(_syn(30000 + i, port, 1000 * i)) for i in range(n)])
    await trio.sleep(0.01)


async def test_full_syn_queue_answers_with_cookie_and_connection_works(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b, raw = net.attach(A), net.attach(B), net.attach(C)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80, backlog=2)
            await _fill_syn_queue(raw, 80, 2)
            assert sb.stats.syn_queue_overflows == 0
            started = trio.current_time()
            client = await sa.open_tcp_stream(B, 80, mss=1400)
            assert trio.current_time() - started < 0.1  # no SYN retransmission needed
            server = await listener.accept()
            assert sb.stats.syn_queue_overflows == 1
            assert sb.stats.syncookies_sent == 1 and sb.stats.syncookies_recv == 1
            # The two half-open connections are still there, untouched.
            states = sorted(row.state.name for row in sb.connections())
            assert states == ["ESTABLISHED", "SYN_RECEIVED", "SYN_RECEIVED"]
            # What the cookie carried: the client's MSS 1400 rounded down to 1300, and (via
            # the timestamp) window scaling and SACK.
            info = server.info()
            assert info.snd_mss == 1300 - 12  # less the timestamp option
            flags = TcpiOption(info.options)
            assert TcpiOption.WSCALE in flags and TcpiOption.SACK in flags
            assert TcpiOption.TIMESTAMPS in flags
            assert info.snd_wscale == client.info().rcv_wscale
            # The handshake RTT came from the echoed timestamp (to within its 64 ms blur), not
            # from a ~0 replay: here the path RTT is ~0, so srtt must be tiny but present.
            assert info.rtt < 64_000
            data_up, data_down = payload(300_000, 1), payload(300_000, 2)
            got, received = bytearray(), bytearray()

            async def pump(stream: TCPStream, data: bytes, into: bytearray) -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.send_all, data)
                    while len(into) < len(data):
                        into.extend(await stream.receive_some())

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client, data_up, got)
                    nursery.start_soon(pump, server, data_down, received)
            assert bytes(got) == data_down and bytes(received) == data_up
            await client.aclose()
            await server.aclose()
            await listener.aclose()


async def test_cookie_without_timestamps_drops_wscale_and_sack(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b, raw = net.attach(A), net.attach(B), net.attach(C)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80, backlog=1)
            await _fill_syn_queue(raw, 80, 1)
            client = await sa.open_tcp_stream(B, 80, timestamps=False)
            server = await listener.accept()
            assert sb.stats.syncookies_recv == 1
            flags = TcpiOption(server.info().options)
            assert not flags & (TcpiOption.WSCALE | TcpiOption.SACK | TcpiOption.TIMESTAMPS)
            assert server.info().snd_mss == 1460
            await client.send_all(b"x" * 5000)
            got = bytearray()
            while len(got) < 5000:
                got.extend(await server.receive_some())
            await client.aclose()
            await server.aclose()


async def test_forged_cookie_ack_gets_reset(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_b, raw = net.attach(B), net.attach(C)
        async with open_stack(link_b, seed=2) as sb:
            await sb.open_tcp_listener(80, backlog=1)
            await _fill_syn_queue(raw, 80, 2)  # the second SYN overflows: cookies are armed
            assert sb.stats.syncookies_sent == 1
            for _ in range(raw.queued):
                await raw.receive_batch()
            forged = TcpSegment(src=C, dst=B, sport=31000, dport=80, seq=5000, ack=0xDEADBEEF,
                                flags=TcpFlags.ACK, window=1000)
            raw.send_batch([build_packet(forged)])
            await trio.sleep(0.01)
            assert sb.stats.syncookies_failed == 1 and sb.stats.syncookies_recv == 0
            replies = [parse_packet(p, verify_checksum=False) for p in await raw.receive_batch()]
            assert any(
                isinstance(r, TcpSegment) and r.flags & TcpFlags.RST and r.seq == 0xDEADBEEF
                for r in replies
            )


@pytest.mark.parametrize("syncookies", [0, 1])
async def test_without_cookies_a_full_queue_delays_the_connect(
    autojump_clock: trio.abc.Clock, syncookies: int
) -> None:
    """Cookies off: the SYN is dropped until the half-open entries expire (SYN-ACK retries,
    ~63 s with Linux's 5); cookies on: the connect completes at once."""
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b, raw = net.attach(A), net.attach(B), net.attach(C)
        async with (
            open_stack(link_a, seed=1) as sa,
            open_stack(link_b, seed=2, syncookies=syncookies) as sb,
        ):
            listener = await sb.open_tcp_listener(80, backlog=1)
            await _fill_syn_queue(raw, 80, 1)
            started = trio.current_time()
            client = await sa.open_tcp_stream(B, 80)
            elapsed = trio.current_time() - started
            server = await listener.accept()
            assert server.conn.state is TcpState.ESTABLISHED
            if syncookies:
                assert elapsed < 0.1 and sb.stats.syncookies_recv == 1
            else:
                assert elapsed > 60 and sb.stats.syncookies_sent == 0
                assert sb.stats.syn_queue_overflows >= 5
            await client.aclose()
            await server.aclose()


async def test_always_cookies_mode(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2, syncookies=2) as sb:
            listener = await sb.open_tcp_listener(80)
            clients = [await sa.open_tcp_stream(B, 80) for _ in range(3)]
            servers = [await listener.accept() for _ in range(3)]
            assert sb.stats.syncookies_sent == sb.stats.syncookies_recv == 3
            for c, s in zip(clients, servers, strict=True):
                await c.send_all(b"ping")
                assert await s.receive_some() == b"ping"
                await c.aclose()
                await s.aclose()


async def test_full_accept_queue_drops_cookie_ack_then_data_completes_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Linux tcp_check_req listen_overflow: a handshake ACK meeting a full accept queue is
    dropped without a RST; the client, established on its side, later sends data, and that
    completes the connection once the application has made room."""
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80, backlog=2)
            clients: list[TCPStream] = []

            async def connect() -> None:
                clients.append(await sa.open_tcp_stream(B, 80))

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(3):  # three SYNs in one batch: two queued, one cookie
                        nursery.start_soon(connect)
                assert sb.stats.syncookies_sent == 1
                assert sb.stats.accept_queue_overflows == 1  # the last ACK found no room
                assert sb.stats.resets_sent == 0
                assert len(clients) == 3  # all established on the client side
                accepted = [await listener.accept(), await listener.accept()]
                for client in clients:
                    await client.send_all(b"late")
                accepted.append(await listener.accept())
                assert sb.stats.syncookies_recv == 1
                assert sb.stats.resets_sent == 0
                for server in accepted:
                    assert await server.receive_some() == b"late"
            for stream in clients + accepted:
                await stream.aclose()
