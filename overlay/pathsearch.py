"""Single-source path searches for :mod:`overlay.routing`, on plain dicts.

networkx's generic searches are several times slower on a 1,000-node overlay, and the widest
path with a latency tie-break is not in networkx at all. Edges are given as a :data:`Table`
(u -> v -> :data:`Edge`) or, for the additive searches, an :data:`Adjacency` of one cost.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

__all__ = [
    "Adjacency",
    "Edge",
    "Table",
    "dijkstra",
    "walk",
    "widest",
    "widest_to",
]

_INF = math.inf
#: Per usable edge: (latency, loss, throughput, -ln(1 - loss), composite cost).
Edge = tuple[float, float, float, float, float]
Table = dict[str, dict[str, Edge]]  # u -> v -> Edge
Adjacency = dict[str, list[tuple[str, float, float]]]  # u -> [(v, cost, latency)]
_NO_EDGES: dict[str, Edge] = {}


def dijkstra(
    adj: Adjacency,
    source: str,
    avoid: str | None = None,
    dst: str | None = None,
    banned: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[dict[str, str], list[str]]:
    """A least-cost tree from ``source`` not through node ``avoid`` nor over ``banned`` edges,
    ties broken by latency then hop count: the predecessors, and the nodes in the order they
    were settled. With ``dst``, it stops once ``dst`` is settled."""
    pred: dict[str, str] = {}
    label: dict[str, tuple[float, float, int]] = {source: (0.0, 0.0, 0)}
    done: set[str] = set()
    order: list[str] = []
    heap: list[tuple[float, float, int, str]] = [(0.0, 0.0, 0, source)]
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        d, lat, hops, u = pop(heap)
        if u in done:
            continue
        done.add(u)
        order.append(u)
        if u == dst:
            break
        for v, w, vl in adj.get(u, ()):
            if v in done or v == avoid or (banned and (u, v) in banned):
                continue
            new = (d + w, lat + vl, hops + 1)
            old = label.get(v)
            if old is None or new < old:
                label[v] = new
                pred[v] = u
                push(heap, (*new, v))
    return pred, order


def widest(
    table: Table,
    by_width: Sequence[tuple[float, str, str, float]],
    source: str,
    avoid: str | None = None,
) -> dict[str, tuple[str, ...]]:
    """Widest path from ``source`` to every reachable node, least latency among the widest.

    ``by_width`` lists every edge of ``table`` as (throughput, u, v, latency), widest first.
    Paths through ``avoid`` are not used.
    """
    pop, push = heapq.heappop, heapq.heappush
    # 1. The bottleneck of the widest path to each node: Dijkstra maximising min(width). Nodes
    # are settled in non-increasing width, so a settled node never passes the ``w >`` test.
    width: dict[str, float] = {source: _INF}
    wget = width.get
    done: set[str] = set()
    wheap: list[tuple[float, str]] = [(-_INF, source)]
    while wheap:
        nb, u = pop(wheap)
        if u in done:
            continue
        done.add(u)
        b = -nb
        for v, e in table.get(u, _NO_EDGES).items():
            w = e[2] if e[2] < b else b
            if w > wget(v, -1.0) and v != avoid:
                width[v] = w
                push(wheap, (-w, v))
    del width[source]
    if not width:
        return {}
    by_level: dict[float, list[str]] = {}
    for v, w in width.items():
        by_level.setdefault(w, []).append(v)
    # 2. Least latency among paths of that bottleneck. Not isotone, so not one Dijkstra: insert
    # edges widest first into an incremental Dijkstra on latency, and once every edge at least
    # as wide as level b is in, read off the nodes whose bottleneck is b. Narrower edges, added
    # later, could shorten their tree path but would also narrow it.
    # Latency alone labels this phase: carrying a hop count too costs a third more time, and
    # this loop is most of the throughput policy's budget.
    dist: dict[str, float] = {source: 0.0}
    pred: dict[str, str] = {}
    adj: dict[str, list[tuple[str, float]]] = {v: [] for v in width}
    adj[source] = []
    paths: dict[str, tuple[str, ...]] = {}
    heap: list[tuple[float, str]] = []
    get = dist.get
    i, n = 0, len(by_width)
    for level in sorted(by_level, reverse=True):
        while i < n:
            tp, u, v, lat = by_width[i]
            if tp < level:
                break
            i += 1
            # Skip edges from or to nodes not reached in phase 1 (``avoid`` is one of them).
            if v not in width or u not in adj:
                continue
            adj[u].append((v, lat))
            du = get(u)
            if du is not None:
                nd = du + lat
                if nd < get(v, _INF):
                    dist[v] = nd
                    pred[v] = u
                    if adj[v]:  # else there is nothing to propagate to (yet)
                        push(heap, (nd, v))
        # Labels only ever decrease, so a Dijkstra drain from the improved nodes makes every
        # label exact again for the edges inserted so far.
        while heap:
            d, u = pop(heap)
            if d > dist[u]:
                continue
            for v, lat in adj[u]:
                nd = d + lat
                if nd < get(v, _INF):
                    dist[v] = nd
                    pred[v] = u
                    if adj[v]:
                        push(heap, (nd, v))
        for v in by_level[level]:
            paths[v] = walk(pred, source, v)
    return paths


def widest_to(
    table: Table,
    source: str,
    dst: str,
    banned: frozenset[tuple[str, str]] = frozenset(),
    avoid: str | None = None,
) -> tuple[str, ...] | None:
    """:func:`widest` for one destination, not over ``banned`` edges nor through ``avoid``: the
    bottleneck B by
    a widest-path Dijkstra that stops at ``dst``, then one latency Dijkstra over the edges at
    least B wide (for a single destination the tie-break needs no incremental levels)."""
    pop, push = heapq.heappop, heapq.heappush
    width: dict[str, float] = {source: _INF}
    wget = width.get
    done: set[str] = set()
    heap: list[tuple[float, str]] = [(-_INF, source)]
    while heap:
        nb, u = pop(heap)
        if u in done:
            continue
        done.add(u)
        if u == dst:
            break
        b = -nb
        for v, e in table.get(u, _NO_EDGES).items():
            w = e[2] if e[2] < b else b
            if w > wget(v, -1.0) and v != avoid and (u, v) not in banned:
                width[v] = w
                push(heap, (-w, v))
    if dst not in done:
        return None
    floor = width[dst]
    dist: dict[str, float] = {source: 0.0}
    pred: dict[str, str] = {}
    done.clear()
    lheap: list[tuple[float, str]] = [(0.0, source)]
    while lheap:
        d, u = pop(lheap)
        if u in done:
            continue
        if u == dst:
            return walk(pred, source, dst)
        done.add(u)
        for v, e in table.get(u, _NO_EDGES).items():
            if (
                e[2] >= floor
                and d + e[0] < dist.get(v, _INF)
                and v != avoid
                and (u, v) not in banned
            ):
                dist[v] = d + e[0]
                pred[v] = u
                push(lheap, (d + e[0], v))
    raise AssertionError("a path of width B exists by construction")


def walk(pred: dict[str, str], source: str, dst: str) -> tuple[str, ...]:
    out = [dst]
    while out[-1] != source:
        out.append(pred[out[-1]])
    out.reverse()
    return tuple(out)
