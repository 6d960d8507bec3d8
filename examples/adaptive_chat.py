"""A chat between two overlay nodes that keeps talking through a link failure.

Four nodes (alice, bob, carol, dave) run in this process, each on its own user-level TCP/IP
stack, joined by an emulated network (one path per overlay link, with its own delay). Alice and
Bob chat over the overlay; at ``--cut-at`` seconds the direct alice-bob link is cut. The
program prints every line with the overlay path it took and every path/link change the nodes
report, then a summary. It uses only the overlay's public API (``open_node``, ``send``,
``receive``, ``best_path``, ``subscribe``) plus the stack's ``open_stack`` and ``MemoryNetwork``
to build the emulated network. Runs in virtual time unless ``--real-time``::

    python examples/adaptive_chat.py
    python examples/adaptive_chat.py --cut-at 2 --lines 20 --real-time
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

from overlay import LinkChange, Neighbour, NodeConfig, OverlayNode, PathChange, open_node
from tcpstack.api import open_stack
from tcpstack.links.impairment import ImpairmentConfig
from tcpstack.links.memory import MemoryNetwork

KEY = b"adaptive chat example key, 32 B"
PORT = 7000
NODES = ("alice", "bob", "carol", "dave")
LINKS = {  # one-way delay, s
    ("alice", "bob"): 0.010,
    ("alice", "carol"): 0.015,
    ("carol", "bob"): 0.015,
    ("alice", "dave"): 0.030,
    ("dave", "bob"): 0.030,
}
ADDRESS = {name: f"198.18.2.{i + 1}" for i, name in enumerate(NODES)}


@asynccontextmanager
async def emulated_overlay(seed: int) -> AsyncIterator[tuple[MemoryNetwork, dict[str, OverlayNode]]]:
    async with AsyncExitStack() as stack:
        net = await stack.enter_async_context(MemoryNetwork(seed=seed))
        for (a, b), delay in LINKS.items():
            net.set_path(ADDRESS[a], ADDRESS[b], ImpairmentConfig(delay=delay))
            net.set_path(ADDRESS[b], ADDRESS[a], ImpairmentConfig(delay=delay))
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


def cut(net: MemoryNetwork, a: str, b: str) -> None:
    net.set_path_down(ADDRESS[a], ADDRESS[b], True)
    net.set_path_down(ADDRESS[b], ADDRESS[a], True)


async def chat(args: argparse.Namespace) -> int:
    start = trio.current_time()

    def stamp() -> str:
        return f"[{trio.current_time() - start:6.2f} s]"

    async with emulated_overlay(args.seed) as (net, nodes):
        alice, bob = nodes["alice"], nodes["bob"]
        with trio.fail_after(30):
            while alice.best_path("bob") is None or bob.best_path("alice") is None:
                await trio.sleep(0.05)
        print(f"{stamp()} overlay up; alice -> bob via {' -> '.join(alice.best_path('bob') or ())}")
        events = alice.subscribe()
        heard: list[str] = []

        async def watch() -> None:
            async for event in events:
                if isinstance(event, PathChange) and event.dst == "bob":
                    new = " -> ".join(event.new) if event.new else "(none)"
                    print(f"{stamp()} alice: path to bob is now {new} ({event.reason})")
                elif isinstance(event, LinkChange):
                    print(f"{stamp()} alice: link to {event.peer} "
                          f"{'up' if event.up else 'DOWN'} ({event.reason})")

        async def listen() -> None:
            while True:
                msg = await bob.receive()
                heard.append(msg.payload.decode())
                print(f"{stamp()} bob <- {msg.src}: {msg.payload.decode()!r} "
                      f"via {' -> '.join(msg.path)}")
                await bob.send(msg.src, f"got #{len(heard)}".encode())

        async def replies() -> None:
            while True:
                await alice.receive()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(listen)
            nursery.start_soon(replies)
            cut_done = False
            for i in range(args.lines):
                if not cut_done and trio.current_time() - start >= args.cut_at:
                    print(f"{stamp()} *** cutting the alice-bob link ***")
                    cut(net, "alice", "bob")
                    cut_done = True
                await alice.send("bob", f"line {i + 1}".encode())
                await trio.sleep(args.interval)
            with trio.move_on_after(10):
                while len(heard) < args.lines or alice.send_window[0]:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        lost = args.lines - len(set(heard))
        print(f"{stamp()} done: {len(heard)} of {args.lines} lines heard, {lost} lost, "
              f"{len(heard) - len(set(heard))} duplicated; alice retransmitted "
              f"{alice.stats.retransmitted}, path changes {alice.stats.path_changes}")
        return 0 if lost == 0 and len(heard) == len(set(heard)) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=12, help="chat lines alice sends (12)")
    parser.add_argument("--interval", type=float, default=0.5, help="s between lines (0.5)")
    parser.add_argument("--cut-at", type=float, default=2.5, help="s until the cut (2.5)")
    parser.add_argument("--seed", type=int, default=1, help="emulation seed (1)")
    parser.add_argument("--real-time", action="store_true", help="run on the wall clock")
    args = parser.parse_args(argv)
    clock = None if args.real_time else trio.testing.MockClock(autojump_threshold=0)
    return trio.run(chat, args, clock=clock)


if __name__ == "__main__":
    sys.exit(main())
