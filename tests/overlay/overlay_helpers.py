"""A small overlay harness: N stacks on one MemoryNetwork, one OverlayNode each, per-pair paths.

Every overlay link (a, b) gets a directional MemoryNetwork path both ways with its own delay and
loss, so a test can cut or degrade one link without touching the others. Run it under
``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio

from overlay import open_node
from overlay.config import MetricSettings, Neighbour, NodeConfig, RoutingSettings
from overlay.node import OverlayNode
from tcpstack.api import Stack, open_stack
from tcpstack.links.impairment import ImpairmentConfig
from tcpstack.links.memory import MemoryLink, MemoryNetwork

KEY = bytes(range(32))
PORT = 7000


def address(index: int) -> str:
    return f"198.18.1.{index + 1}"


@attrs.define
class Overlay:
    net: MemoryNetwork
    addresses: dict[str, str]
    stacks: dict[str, Stack]
    nodes: dict[str, OverlayNode]
    delays: dict[frozenset[str], float]
    ports: dict[str, MemoryLink] = attrs.Factory(dict)  # each node's port: IP-level counters

    def node(self, node_id: str) -> OverlayNode:
        return self.nodes[node_id]

    def cut(self, a: str, b: str, down: bool = True) -> None:
        """Cut (or restore) the link a-b in both directions."""
        for x, y in ((a, b), (b, a)):
            self.net.set_path_down(self.addresses[x], self.addresses[y], down)

    def set_loss(self, a: str, b: str, loss: float) -> None:
        """Random loss on the link a-b, both directions, keeping its delay."""
        delay = self.delays[frozenset((a, b))]
        for x, y in ((a, b), (b, a)):
            self.net.set_path(
                self.addresses[x], self.addresses[y], ImpairmentConfig(delay=delay, loss=loss)
            )


@asynccontextmanager
async def open_overlay(
    links: Mapping[tuple[str, str], float],
    *,
    seed: int = 1,
    metrics: MetricSettings | None = None,
    routing: RoutingSettings | None = None,
    key: bytes = KEY,
) -> AsyncIterator[Overlay]:
    """Nodes for every id in ``links`` ((a, b) -> one-way delay in s), neighbours along them."""
    ids = sorted({n for pair in links for n in pair})
    addrs = {n: address(i) for i, n in enumerate(ids)}
    delays = {frozenset(pair): delay for pair, delay in links.items()}
    async with AsyncExitStack() as stack:
        net = await stack.enter_async_context(MemoryNetwork(seed=seed))
        for (a, b), delay in links.items():
            for x, y in ((a, b), (b, a)):
                net.set_path(addrs[x], addrs[y], ImpairmentConfig(delay=delay))
        stacks: dict[str, Stack] = {}
        nodes: dict[str, OverlayNode] = {}
        ports: dict[str, MemoryLink] = {}
        for i, n in enumerate(ids):
            link = ports[n] = net.attach(addrs[n])
            stacks[n] = await stack.enter_async_context(
                open_stack(link, seed=seed * 1000 + i, close_timeout=0.1)
            )
        for i, n in enumerate(ids):
            neighbours = tuple(
                Neighbour(node_id=m, address=addrs[m], port=PORT)
                for m in ids
                if frozenset((n, m)) in delays
            )
            config = NodeConfig(
                node_id=n, key=key, listen_port=PORT,
                neighbours=neighbours,
                metrics=metrics or MetricSettings(), routing=routing or RoutingSettings(),
            )
            nodes[n] = await stack.enter_async_context(
                open_node(stacks[n], config, seed=seed * 1000 + i)
            )
        yield Overlay(net, addrs, stacks, nodes, delays, ports)


async def wait_routable(overlay: Overlay, *, policy: str = "latency", timeout: float = 30.0) -> float:
    """Wait until every node has a path to every other; return the virtual time it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            if all(
                node.best_path(other, policy) is not None
                for nid, node in overlay.nodes.items()
                for other in overlay.nodes
                if other != nid
            ):
                return trio.current_time() - start
            await trio.sleep(0.05)
