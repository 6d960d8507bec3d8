"""Shared pieces of the stack tests: addresses, seeded payloads, a bidirectional bulk exchange."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable

import attrs
import trio

from tcpstack.api import Stack, TCPStream
from tcpstack.tcp import Connection
from tcpstack.tcp.state import TcpState

A = "198.18.0.1"
B = "198.18.0.2"


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@attrs.define
class Side:
    """What one end of :func:`exchange` saw."""

    stream: TCPStream | None = None
    received: bytearray = attrs.Factory(bytearray)
    error: BaseException | None = None


async def _run_side(
    get_stream: Callable[[], Awaitable[TCPStream]], data: bytes, side: Side, chunk: int,
    engines: dict[tuple[str, int, str, int], Connection] | None = None,
) -> None:
    stream = await get_stream()
    side.stream = stream
    if engines is not None:
        engines[(*stream.conn.local, *stream.conn.remote)] = stream.conn

    async def tx() -> None:
        await stream.send_all(data)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tx)
        while block := await stream.receive_some(chunk):
            side.received.extend(block)
    await stream.aclose()


async def exchange(
    sa: Stack, sb: Stack, up: bytes, down: bytes, *, port: int = 5001, chunk: int = 65536,
    engines: dict[tuple[str, int, str, int], Connection] | None = None,
) -> tuple[Side, Side]:
    """A (client) sends ``up`` while B (server) sends ``down``; both half-close, read to EOF and
    close. Returns (client side, server side). ``engines``, if given, is filled with each side's
    engine under its (local address, local port, remote address, remote port) as it opens."""
    listener = await sb.open_tcp_listener(port)
    client, server = Side(), Side()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_side, listener.accept, down, server, chunk, engines)
        nursery.start_soon(
            _run_side, lambda: sa.open_tcp_stream(B, port), up, client, chunk, engines
        )
    await listener.aclose()
    return client, server


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_all_closed_cleanly(*stacks: Stack, timeout: float = 600.0) -> None:
    """Every connection of ``stacks`` reaches TIME-WAIT or CLOSED without an error."""
    with trio.fail_after(timeout):
        while True:
            states = [row.state for s in stacks for row in s.connections()]
            if all(st in (TcpState.TIME_WAIT, TcpState.CLOSED) for st in states):
                return
            await trio.sleep(0.05)


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task alive under the root task."""
    found: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found
