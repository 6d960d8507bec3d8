"""Single-source path searches for :mod:`overlay.routing`, on integer node indices.

networkx's generic searches are several times slower on a 1,000-node overlay, and the widest
path with a latency tie-break is not in networkx at all. The router maps node ids to
``0..n-1`` once per graph version and tabulates every usable edge once as an :data:`Edge`
tuple; every search here reads those same tuples (an :data:`Adjacency`: per node, its
out-edges), by column, so no policy needs a copy of the graph of its own. Lists indexed by
node and plain tuples keep the inner loops free of hashing and attribute lookups. ``-1``
means "no node" (no predecessor, nothing to avoid, no early-exit destination).
"""

from __future__ import annotations

import collections
import heapq
import math
import operator
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Adjacency",
    "Edge",
    "LATENCY",
    "Widest",
    "WIDTH",
    "by_width",
    "dijkstra",
    "walk",
    "widest",
    "widest_to",
]

_INF = math.inf
#: One directed edge u -> v: (v, width, latency, keep, extra, u, cost). :func:`widest` carries
#: ``keep`` (multiplied) and ``extra`` (summed) along each path; :func:`dijkstra` adds up any
#: column it is told to, with latency as the tie-break. The router puts 1 - loss in ``keep``,
#: the composite cost in ``extra`` and -ln(1 - loss) in ``cost``.
Edge = tuple[int, float, float, float, float, int, float]
Adjacency = list[list[Edge]]  # u -> its out-edges
WIDTH, LATENCY = 1, 2  # Edge columns
# path (of indices or labels), latency, width, keep, extra
Widest = tuple[tuple[Any, ...], float, float, float, float]
_NO_BAN: frozenset[tuple[int, int]] = frozenset()
_WIDTH = operator.itemgetter(WIDTH)


def dijkstra(
    adj: Adjacency,
    source: int,
    key: int,
    avoid: int = -1,
    dst: int = -1,
    banned: frozenset[tuple[int, int]] = _NO_BAN,
) -> tuple[list[int], list[int], list[Edge | None]]:
    """A tree of least cost (the sum of :data:`Edge` column ``key``) from ``source`` not
    through node ``avoid`` nor over ``banned`` edges, ties broken by latency then hop count:
    the predecessors (``-1`` for none), and the nodes in the order they were settled
    (``source`` first), and per node the tree edge into it (None for the source and nodes
    not reached). With ``dst``, it stops once ``dst`` is settled."""
    n = len(adj)
    pred = [-1] * n
    via: list[Edge | None] = [None] * n
    cost = [_INF] * n
    lat = [_INF] * n
    hops = [0] * n
    done = [False] * n
    if avoid != source and 0 <= avoid < n:
        done[avoid] = True  # never settled, so never relaxed into nor out of
    cost[source] = lat[source] = 0.0
    order: list[int] = []
    heap: list[tuple[float, float, int, int]] = [(0.0, 0.0, 0, source)]
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        d, dl, h, u = pop(heap)
        if done[u]:
            continue
        done[u] = True
        order.append(u)
        if u == dst:
            break
        h += 1
        for e in adj[u]:
            v = e[0]
            if done[v]:
                continue
            nd = d + e[key]
            cv = cost[v]
            if nd > cv:
                continue
            nl = dl + e[2]
            # Lexicographic (cost, latency, hops), unrolled: no tuple per relaxation.
            if nd == cv and (nl > lat[v] or (nl == lat[v] and h >= hops[v])):
                continue
            if banned and (u, v) in banned:
                continue
            cost[v], lat[v], hops[v], pred[v], via[v] = nd, nl, h, u, e
            push(heap, (nd, nl, h, v))
    return pred, order, via


def by_width(adj: Adjacency) -> list[Edge]:
    """Every edge of ``adj``, widest first: :func:`widest`'s activation order, computed once
    per graph and shared by its searches."""
    edges = [e for row in adj for e in row]
    edges.sort(key=_WIDTH, reverse=True)  # float keys: the sort's fast float compare
    return edges


def widest(
    adj: Adjacency,
    edges: list[Edge],
    source: int,
    avoid: int = -1,
    labels: Sequence[Any] | None = None,
) -> dict[int, Widest]:
    """Widest path from ``source`` to every reachable node, least latency among the widest.

    ``edges`` is :func:`by_width` of ``adj``. Paths through ``avoid`` are not used. Among
    paths of equal bottleneck and equal latency the one found first wins. Per node, a
    :data:`Widest`: the path (of node indices, or of ``labels[i]`` if given: the router's
    node ids, so its table needs no second pass over every path), its latency, its width, and
    the product of ``keep`` and the sum of ``extra`` over its edges, accumulated from the
    source (the router passes 1 - loss and the composite cost, so no path has to be walked
    edge by edge again).

    The bottleneck B(v) of a node is the largest ``b`` such that ``v`` is reachable over edges
    at least ``b`` wide; the answer for ``v`` is the least-latency path in that subgraph G_b.
    The tie-break is not isotone (a prefix of the best path need not be the best path to the
    intermediate node), so a Dijkstra on (width, latency) labels would be wrong. Instead edges
    are added to an incremental least-latency search in order of falling *activation level*:
    an edge u -> v belongs to G_b exactly when ``b <= min(B(u), width)``, because every edge
    out of a node reachable over edges >= b that is itself >= b wide leads to another such
    node. Levels fall monotonically, so this one pass is also the widest-path search that finds
    B: the first edge to activate into ``v`` sets B(v). An edge narrower than B(u) activates at
    its own width, so a scan of ``edges`` in order finds it; one at least as wide activates
    when u is reached. Once every edge of level >= b is in and the latency labels are exact,
    the nodes of bottleneck b read off their paths; narrower edges, added later, could shorten
    them but would also narrow them.
    """
    n = len(adj)
    width = [-1.0] * n  # B(v); -1 until v is reached
    width[source] = _INF
    dist = [_INF] * n  # least latency over the edges activated so far
    dist[source] = 0.0
    keep = [1.0] * n  # product of keep along the tree path
    extra = [0.0] * n  # sum of extra along the tree path
    pred = [-1] * n
    ladj: Adjacency = [[] for _ in range(n)]  # the activated edges
    queue: collections.deque[int] = collections.deque()  # labels fell, edges not relaxed
    append, popleft = queue.append, queue.popleft
    queued = [False] * n
    out: dict[int, Widest] = {}
    names: Sequence[Any] = range(n) if labels is None else labels
    paths: list[tuple[Any, ...]] = [()] * n  # of the nodes read off, as they were then
    paths[source] = (names[source],)
    seen = [0] * n  # the read-off at which a node's entry in paths was made
    readoffs = 0
    todo: list[int] = []  # reached at this level, out-edges not yet looked at
    pending: list[int] = []  # reached at this level, path not yet read off
    reachable = n - 1 - (1 if avoid != source and 0 <= avoid < n else 0)
    level = _INF
    i, m = 0, len(edges)
    v, w = -1, _INF
    e: Edge = (-1, 0.0, 0.0, 1.0, 0.0, -1, 0.0)
    while True:
        while todo:
            u = todo.pop()
            du, ku, eu, lu = dist[u], keep[u], extra[u], ladj[u]
            for e in adj[u]:
                if e[1] < level:
                    continue  # narrower: the scan activates it later
                v = e[0]
                if v == source or v == avoid:
                    continue  # no path comes back to the source nor goes through avoid
                # At least as wide as u's bottleneck: the edge is in G_level already.
                lu.append(e)
                nd = du + e[2]
                if nd < dist[v]:
                    dist[v], pred[v], keep[v], extra[v] = nd, u, ku * e[3], eu + e[4]
                    if not queued[v] and ladj[v]:  # else nothing to propagate to (yet)
                        queued[v] = True
                        append(v)
                if width[v] < 0.0:
                    width[v] = level
                    todo.append(v)
                    pending.append(v)
        # The next edge narrower than its (reached) tail's bottleneck. Edges whose tail is
        # not reached yet activate when it is, at its bottleneck: skip them here.
        u = -1
        while i < m:
            e = edges[i]
            i += 1
            w, u = e[1], e[5]
            if width[u] > w:
                break
            u = -1
        if (u < 0 or w < level) and pending:
            # Level complete: make every label exact for the edges activated so far, then
            # read off its nodes. Labels only ever decrease and every node whose label fell
            # since its out-edges were relaxed is queued, so relaxing until the queue is
            # empty gives shortest latencies (Bellman-Ford's argument: order does not matter
            # for exactness). FIFO order relaxes some nodes twice in one drain, but on a
            # 1,000-node overlay that is cheaper than a priority queue's log factor.
            while queue:
                x = popleft()
                queued[x] = False
                dx = dist[x]
                for f in ladj[x]:
                    y = f[0]
                    nd = dx + f[2]
                    dy = dist[y]
                    if nd > dy:
                        continue
                    if nd < dy:
                        dist[y], pred[y] = nd, x
                        keep[y], extra[y] = keep[x] * f[3], extra[x] + f[4]
                    elif pred[y] == x and (
                        keep[y] != keep[x] * f[3] or extra[y] != extra[x] + f[4]
                    ):
                        # x's path changed but x + latency rounds to y's old latency: y keeps
                        # the path through x, so its other sums must follow that path.
                        keep[y], extra[y] = keep[x] * f[3], extra[x] + f[4]
                    else:
                        continue
                    if not queued[y] and ladj[y]:
                        queued[y] = True
                        append(y)
            # Read off in the order reached: a node's tree path often runs through one read
            # off just before, whose path (fixed until the next level) is reused.
            readoffs += 1
            for t in pending:
                chain = [names[t]]
                x = pred[t]
                while x != source and seen[x] != readoffs:
                    chain.append(names[x])
                    x = pred[x]
                chain.reverse()
                path = paths[x] + tuple(chain)
                paths[t] = path
                seen[t] = readoffs
                out[t] = (path, dist[t], level, keep[t], extra[t])
            pending.clear()
            if len(out) == reachable:
                return out
        if u < 0:
            return out
        level = w
        v = e[0]
        if v == source or v == avoid:
            continue
        # Activate u -> v at this level (u was reached at a level above it).
        ladj[u].append(e)
        nd = dist[u] + e[2]
        if nd < dist[v]:
            dist[v], pred[v], keep[v], extra[v] = nd, u, keep[u] * e[3], extra[u] + e[4]
            if not queued[v] and ladj[v]:
                queued[v] = True
                append(v)
        if width[v] < 0.0:
            width[v] = level
            todo.append(v)
            pending.append(v)


def widest_to(
    adj: Adjacency,
    source: int,
    dst: int,
    banned: frozenset[tuple[int, int]] = _NO_BAN,
    avoid: int = -1,
) -> tuple[int, ...] | None:
    """:func:`widest` for one destination, not over ``banned`` edges nor through ``avoid``: the
    bottleneck B by a widest-path Dijkstra that stops at ``dst``, then one latency Dijkstra
    over the edges at least B wide (for a single destination the tie-break needs no
    incremental levels)."""
    if source == dst:
        return None
    n = len(adj)
    pop, push = heapq.heappop, heapq.heappush
    width = [-1.0] * n
    width[source] = _INF
    done = [False] * n
    if avoid != source and 0 <= avoid < n:
        done[avoid] = True
    heap: list[tuple[float, int]] = [(-_INF, source)]
    while heap:
        nb, u = pop(heap)
        if done[u]:
            continue
        done[u] = True
        if u == dst:
            break
        b = -nb
        for e in adj[u]:
            v, w = e[0], e[1]
            if w > b:
                w = b
            if w > width[v] and not done[v] and not (banned and (u, v) in banned):
                width[v] = w
                push(heap, (-w, v))
    if not done[dst] or dst == avoid:
        return None
    floor = width[dst]
    dist = [_INF] * n
    dist[source] = 0.0
    pred = [-1] * n
    done = [False] * n
    if avoid != source and 0 <= avoid < n:
        done[avoid] = True
    lheap: list[tuple[float, int]] = [(0.0, source)]
    while lheap:
        d, u = pop(lheap)
        if done[u]:
            continue
        if u == dst:
            return walk(pred, source, dst)
        done[u] = True
        for e in adj[u]:
            v, nd = e[0], d + e[2]
            if e[1] >= floor and nd < dist[v] and not done[v] and not (banned and (u, v) in banned):
                dist[v] = nd
                pred[v] = u
                push(lheap, (nd, v))
    raise AssertionError("a path of width B exists by construction")


def walk(pred: list[int], source: int, dst: int) -> tuple[int, ...]:
    """The tree path from ``source`` to ``dst`` (which must be in the tree)."""
    out = [dst]
    while dst != source:
        dst = pred[dst]
        out.append(dst)
    out.reverse()
    return tuple(out)
