"""A file transfer over the overlay that survives a link failure on its path.

Five nodes run in this process, each on its own user-level TCP/IP stack, over an emulated
network where every overlay link has its own delay. ``src`` sends a file (seeded random bytes)
to ``dst`` in chunks with reliable overlay messages under the ``throughput`` policy; once a
third of it is through, the first link of the path in use is cut. The receiver puts the chunks
back together by index, and the program checks the SHA-256 of what arrived, prints the path
changes, the time the transfer stalled and the retransmissions, and exits 0 only if the file
arrived intact. It uses only the overlay's public API plus the stack's ``open_stack`` and
``MemoryNetwork``; virtual time unless ``--real-time``::

    python examples/resilient_transfer.py
    python examples/resilient_transfer.py --size 2000000 --chunk 8192
"""

from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

from overlay import Neighbour, NodeConfig, OverlayNode, PathChange, open_node
from tcpstack.api import open_stack
from tcpstack.links.impairment import ImpairmentConfig
from tcpstack.links.memory import MemoryNetwork

KEY = b"resilient transfer example key.."
PORT = 7000
NODES = ("src", "r1", "r2", "r3", "dst")
LINKS = {  # one-way delay (s), rate (bits/s)
    ("src", "r1"): (0.005, 40e6),
    ("r1", "dst"): (0.005, 40e6),
    ("src", "r2"): (0.010, 20e6),
    ("r2", "dst"): (0.010, 20e6),
    ("src", "r3"): (0.020, 10e6),
    ("r3", "dst"): (0.020, 10e6),
}
ADDRESS = {name: f"198.18.3.{i + 1}" for i, name in enumerate(NODES)}
HEADER = struct.Struct(">II")  # chunk index, chunk count


@asynccontextmanager
async def emulated_overlay(seed: int) -> AsyncIterator[tuple[MemoryNetwork, dict[str, OverlayNode]]]:
    async with AsyncExitStack() as stack:
        net = await stack.enter_async_context(MemoryNetwork(seed=seed))
        for (a, b), (delay, rate) in LINKS.items():
            for x, y in ((a, b), (b, a)):
                net.set_path(ADDRESS[x], ADDRESS[y], ImpairmentConfig(delay=delay, rate=rate))
        nodes: dict[str, OverlayNode] = {}
        for i, name in enumerate(NODES):
            tcp = await stack.enter_async_context(
                open_stack(net.attach(ADDRESS[name]), seed=seed + i, close_timeout=0.1)
            )
            peers = [b if a == name else a for a, b in LINKS if name in (a, b)]
            config = NodeConfig(
                node_id=name, key=KEY, listen_port=PORT,
                neighbours=tuple(Neighbour(p, ADDRESS[p], PORT) for p in peers),
            )
            nodes[name] = await stack.enter_async_context(open_node(tcp, config, seed=seed + i))
        yield net, nodes


async def transfer(args: argparse.Namespace) -> int:
    data = random.Random(args.seed).randbytes(args.size)
    chunks = [data[i : i + args.chunk] for i in range(0, len(data), args.chunk)]
    async with emulated_overlay(args.seed) as (net, nodes):
        src, dst = nodes["src"], nodes["dst"]
        with trio.fail_after(30):
            while src.best_path("dst", "throughput") is None:
                await trio.sleep(0.05)
        await trio.sleep(2.0)  # let the first measurements reach the link-state database
        start = trio.current_time()
        path = src.best_path("dst", "throughput")
        assert path is not None
        print(f"[{0:6.2f} s] sending {len(data)} bytes in {len(chunks)} chunks "
              f"via {' -> '.join(path)}")
        events = src.subscribe()
        received: dict[int, bytes] = {}
        arrivals: list[float] = []
        cut_at: list[float] = []

        async def receiver() -> None:
            while len(received) < len(chunks):
                msg = await dst.receive()
                index, _count = HEADER.unpack_from(msg.payload)
                received[index] = msg.payload[HEADER.size :]
                arrivals.append(trio.current_time())

        async def watch() -> None:
            async for event in events:
                if isinstance(event, PathChange) and event.dst == "dst":
                    new = " -> ".join(event.new) if event.new else "(none)"
                    print(f"[{event.at - start:6.2f} s] path to dst: {new} ({event.reason})")

        async def cutter() -> None:
            while len(received) < len(chunks) // 3:
                await trio.sleep(0.001)
            current = src.best_path("dst", "throughput") or path
            cut_at.append(trio.current_time())
            print(f"[{cut_at[0] - start:6.2f} s] *** {len(received)} chunks in: cutting "
                  f"{current[0]}-{current[1]} ***")
            for x, y in ((current[0], current[1]), (current[1], current[0])):
                net.set_path_down(ADDRESS[x], ADDRESS[y], True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(watch)
            nursery.start_soon(cutter)
            for i, chunk in enumerate(chunks):
                await src.send("dst", HEADER.pack(i, len(chunks)) + chunk, policy="throughput")
            with trio.move_on_after(60):
                while len(received) < len(chunks):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        got = b"".join(received[i] for i in sorted(received))
        ok = len(received) == len(chunks) and hashlib.sha256(got).digest() == hashlib.sha256(
            data
        ).digest()
        stall = max(
            (b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b > cut_at[0]),
            default=0.0,
        )
        print(f"[{elapsed:6.2f} s] {'intact' if ok else 'CORRUPT OR INCOMPLETE'}: "
              f"{len(got)} of {len(data)} bytes, sha256 {hashlib.sha256(got).hexdigest()[:16]}; "
              f"{len(data) / elapsed / 1e6:.2f} MB/s; longest stall after the cut {stall:.3f} s; "
              f"retransmitted {src.stats.retransmitted} (rerouted {src.stats.rerouted}), "
              f"duplicates at dst {dst.stats.duplicates}")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes to send (1000000)")
    parser.add_argument("--chunk", type=int, default=16384, help="bytes per message (16384)")
    parser.add_argument("--seed", type=int, default=1, help="data and emulation seed (1)")
    parser.add_argument("--real-time", action="store_true", help="run on the wall clock")
    args = parser.parse_args(argv)
    if args.size < 1 or not 1 <= args.chunk <= 60000:
        parser.error("--size must be >= 1 and --chunk within 1..60000")
    clock = None if args.real_time else trio.testing.MockClock(autojump_threshold=0)
    return trio.run(transfer, args, clock=clock)


if __name__ == "__main__":
    sys.exit(main())
