"""``tcpstack.socket``: trio.socket's names over the user-level stack.

The echo program below is written against ``trio.socket``; it runs unchanged (only the module
passed in differs) on two user-level stacks in virtual time and on the kernel's loopback.
"""

from __future__ import annotations

import errno
import hashlib
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import pytest
import trio
import trio.socket as trio_socket

import tcpstack.socket as tsocket
from tcpstack import open_stack
from tcpstack.api import Stack
from tcpstack.links import MemoryNetwork
from tcpstack.tcp.info import TCPInfo

SERVER = "198.18.0.2"
CLIENT = "198.18.0.1"
PORT = 7007


# ---------------------------------------------------------------- the program under test
# Written for trio.socket: socket(), async bind/connect/accept/send/recv, sync listen/shutdown/close.

async def echo_server(socket_module: ModuleType, host: str, port: int, ready: trio.Event) -> int:
    served = 0
    listener = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM)
    listener.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEADDR, 1)
    await listener.bind((host, port))
    listener.listen(5)
    ready.set()
    conn, _addr = await listener.accept()
    while True:
        data = await conn.recv(4096)
        if not data:
            break
        view = memoryview(data)
        while view:
            sent = await conn.send(view)
            view = view[sent:]
        served += len(data)
    conn.close()
    listener.close()
    return served


async def echo_client(socket_module: ModuleType, host: str, port: int, payload: bytes) -> bytes:
    sock = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM)
    sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
    await sock.connect((host, port))
    received = bytearray()

    async def reader() -> None:
        while True:
            chunk = await sock.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        view = memoryview(payload)
        while view:
            sent = await sock.send(view[:10000])
            view = view[sent:]
        sock.shutdown(socket_module.SHUT_WR)
    sock.close()
    return bytes(received)


async def run_echo(socket_module: ModuleType, server_host: str, connect_host: str, port: int,
                   payload: bytes, server_ctx: object = None, client_ctx: object = None) -> tuple[bytes, int]:
    ready = trio.Event()
    results: dict[str, object] = {}

    async def server() -> None:
        with server_ctx or _null():  # type: ignore[attr-defined]
            results["served"] = await echo_server(socket_module, server_host, port, ready)

    async def client() -> None:
        await ready.wait()
        with client_ctx or _null():  # type: ignore[attr-defined]
            results["echo"] = await echo_client(socket_module, connect_host, port, payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(client)
    return results["echo"], results["served"]  # type: ignore[return-value]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ---------------------------------------------------------------- fixtures

@asynccontextmanager
async def two_stacks() -> AsyncIterator[tuple[Stack, Stack]]:
    async with MemoryNetwork(seed=3) as net:
        a, b = net.attach(CLIENT), net.attach(SERVER)
        async with open_stack(a, seed=1) as client, open_stack(b, seed=2) as server:
            yield client, server


# ---------------------------------------------------------------- the echo program, both ways

async def test_echo_program_runs_unchanged_on_the_user_level_stack(autojump_clock: trio.abc.Clock) -> None:
    payload = random.Random(7).randbytes(300_000)
    async with two_stacks() as (client, server):
        echo, served = await run_echo(
            tsocket, "0.0.0.0", SERVER, PORT, payload,
            server_ctx=tsocket.using_stack(server), client_ctx=tsocket.using_stack(client),
        )
    assert served == len(payload)
    assert hashlib.sha256(echo).digest() == hashlib.sha256(payload).digest()


async def test_echo_program_runs_on_trio_socket_too() -> None:
    # The same functions on the kernel's loopback: proof that they are trio.socket programs.
    payload = random.Random(8).randbytes(100_000)
    with trio.fail_after(20):
        echo, served = await run_echo(trio_socket, "127.0.0.1", "127.0.0.1", 0 or 47123, payload)
    assert echo == payload and served == len(payload)


# ---------------------------------------------------------------- options

async def test_options_round_trip(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client, server):
        with tsocket.using_stack(client):
            s = tsocket.socket()
            for level, name, value, want in [
                (tsocket.IPPROTO_TCP, tsocket.TCP_NODELAY, 1, 1),
                (tsocket.SOL_SOCKET, tsocket.SO_KEEPALIVE, 1, 1),
                (tsocket.IPPROTO_TCP, tsocket.TCP_KEEPIDLE, 30, 30),
                (tsocket.IPPROTO_TCP, tsocket.TCP_KEEPINTVL, 5, 5),
                (tsocket.IPPROTO_TCP, tsocket.TCP_KEEPCNT, 4, 4),
                (tsocket.IPPROTO_TCP, tsocket.TCP_USER_TIMEOUT, 2500, 2500),
                (tsocket.IPPROTO_TCP, tsocket.TCP_MAXSEG, 1200, 1200),
                (tsocket.SOL_SOCKET, tsocket.SO_RCVBUF, 50_000, 100_000),  # Linux doubles
                (tsocket.SOL_SOCKET, tsocket.SO_SNDBUF, 30_000, 60_000),
                (tsocket.SOL_SOCKET, tsocket.SO_REUSEADDR, 1, 1),
            ]:
                s.setsockopt(level, name, value)
                assert s.getsockopt(level, name) == want, name
                assert s.getsockopt(level, name, 4) == struct.pack("i", want)
            s.setsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_CONGESTION, b"reno")
            ca = s.getsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_CONGESTION, 16)
            assert isinstance(ca, bytes) and ca.rstrip(b"\0") == b"reno"
            s.setsockopt(tsocket.SOL_SOCKET, tsocket.SO_LINGER, struct.pack("ii", 1, 0))
            assert s.getsockopt(tsocket.SOL_SOCKET, tsocket.SO_LINGER, 8) == struct.pack("ii", 1, 0)

            with tsocket.using_stack(server):
                listener = tsocket.socket()
                await listener.bind(("", PORT))
                listener.listen(1)
            await s.connect((SERVER, PORT))
            conn = s.connection
            assert conn is not None
            # The options reached the engine of the connection they were set on.
            assert conn.opts.nodelay and conn.opts.keepalive.enabled
            assert conn.opts.keepalive.idle == 30 and conn.opts.keepalive.count == 4
            assert conn.opts.user_timeout == 2.5 and conn.opts.congestion == "newreno"
            assert conn.advmss == 1200 and conn.opts.receive_buffer == 100_000
            # Set on a live connection: applied at once.
            s.setsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_USER_TIMEOUT, 0)
            assert conn.opts.user_timeout is None
            s.setsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_NODELAY, 0)
            assert not conn.opts.nodelay
            assert s.getsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_MAXSEG) == conn.mss_cache

            raw = s.getsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_INFO, 512)
            assert isinstance(raw, bytes)
            info = TCPInfo.unpack(raw)
            assert info.state == 1  # Linux TCP_ESTABLISHED
            assert info.snd_mss == conn.mss_cache
            short = s.getsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_INFO, 8)
            assert short == raw[:8]
            s.close()
            listener.close()


# ---------------------------------------------------------------- errors

async def test_errors_carry_linux_errno(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client, server):
        with tsocket.using_stack(client):
            s = tsocket.socket()
            with pytest.raises(OSError) as exc_info:
                await s.recv(10)
            assert exc_info.value.errno == errno.ENOTCONN
            with pytest.raises(ConnectionRefusedError) as refused:
                await s.connect((SERVER, 9))  # nobody listens there: RST
            assert refused.value.errno == errno.ECONNREFUSED
            s.close()
            with pytest.raises(OSError) as closed:
                await s.send(b"x")
            assert closed.value.errno == errno.EBADF
            assert s.fileno() == -1

            n = tsocket.socket()
            with pytest.raises(OSError) as noopt:
                n.setsockopt(tsocket.IPPROTO_TCP, 99, 1)
            assert noopt.value.errno == errno.ENOPROTOOPT
            with pytest.raises(OSError) as badcc:
                n.setsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_CONGESTION, b"nosuch")
            assert badcc.value.errno == errno.ENOENT
            with pytest.raises(OSError) as badmss:
                n.setsockopt(tsocket.IPPROTO_TCP, tsocket.TCP_MAXSEG, 10)
            assert badmss.value.errno == errno.EINVAL
            n.close()
            with pytest.raises(OSError) as family:
                tsocket.socket(10)  # AF_INET6
            assert family.value.errno == errno.EAFNOSUPPORT

        with tsocket.using_stack(server):
            a, b = tsocket.socket(), tsocket.socket()
            await a.bind(("", PORT))
            a.listen(1)
            with pytest.raises(OSError) as inuse:
                await b.bind(("", PORT))
            assert inuse.value.errno == errno.EADDRINUSE
            a.setblocking(False)
            with pytest.raises(BlockingIOError) as again:
                await a.accept()
            assert again.value.errno == errno.EAGAIN
            a.close()
            b.close()


async def test_nonblocking_connect_and_reset_by_peer(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client, server):
        with tsocket.using_stack(server):
            listener = tsocket.socket()
            await listener.bind(("", PORT))
            listener.listen(1)
        with tsocket.using_stack(client):
            s = tsocket.socket()
            s.setblocking(False)
            with pytest.raises(BlockingIOError) as inprogress:
                await s.connect((SERVER, PORT))
            assert inprogress.value.errno == errno.EINPROGRESS
            with pytest.raises(BlockingIOError) as again:
                await s.recv(10)
            assert again.value.errno == errno.EAGAIN
            await trio.sleep(0.01)
            assert s.getsockopt(tsocket.SOL_SOCKET, tsocket.SO_ERROR) == 0
            assert s.getpeername() == (SERVER, PORT)
            assert s.getsockname()[0] == CLIENT
            s.setblocking(True)
        peer, addr = await listener.accept()
        assert addr == s.getsockname()
        # SO_LINGER {1, 0}: close() resets the connection.
        peer.setsockopt(tsocket.SOL_SOCKET, tsocket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        with pytest.raises(ConnectionResetError) as reset:
            await s.recv(10)
        assert reset.value.errno == errno.ECONNRESET
        # The error is reported once, like the kernel's sk_err; then the socket reads EOF and
        # writes fail with EPIPE.
        assert await s.recv(10) == b""
        with pytest.raises(BrokenPipeError) as pipe:
            await s.send(b"late")
        assert pipe.value.errno == errno.EPIPE
        s.close()
        listener.close()


async def test_descriptors_are_the_lowest_free_numbers(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client, _server):
        with tsocket.using_stack(client):
            a, b = tsocket.socket(), tsocket.socket()
            assert (a.fileno(), b.fileno()) == (3, 4)
            a.close()
            c = tsocket.socket()
            assert c.fileno() == 3
            b.close()
            c.close()


def test_no_stack_is_a_clear_error() -> None:
    tsocket.set_stack(None)
    with pytest.raises(RuntimeError, match="using_stack"):
        tsocket.socket()


async def test_set_stack_is_the_process_default(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client, server):
        tsocket.set_stack(server)
        try:
            assert tsocket.socket().stack is server
            with tsocket.using_stack(client):
                assert tsocket.socket().stack is client
        finally:
            tsocket.set_stack(None)


async def test_msg_peek_leaves_data_in_the_receive_queue(autojump_clock: trio.abc.Clock) -> None:
    async with two_stacks() as (client_stack, server_stack):
        with tsocket.using_stack(server_stack):
            listener = tsocket.socket()
        await listener.bind((SERVER, PORT))
        listener.listen(1)
        with tsocket.using_stack(client_stack):
            client = tsocket.socket()
        await client.connect((SERVER, PORT))
        conn, _ = await listener.accept()
        # Two writes, so the receive queue holds more than one chunk and a peek spans them.
        await client.send(b"hello ")
        await client.send(b"world")
        await trio.sleep(1)
        assert await conn.recv(8, tsocket.MSG_PEEK) == b"hello wo"
        assert await conn.recv(8, tsocket.MSG_PEEK) == b"hello wo"
        assert await conn.recv(100) == b"hello world"
        for s in (client, conn, listener):
            s.close()
