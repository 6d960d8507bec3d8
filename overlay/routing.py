"""Path computation over the link-state graph, per policy, and hysteresis between paths.

Edges come from :meth:`overlay.linkstate.LinkStateDatabase.graph` (attributes ``latency`` = srtt
in s, ``loss`` as a fraction, ``throughput`` in bytes/s, ``up``). A path's metrics
(:class:`PathMetrics`): latency = sum of srtt; loss = 1 - prod(1 - p); throughput = the smallest
edge throughput (the bottleneck). Policies, each "lower cost is better" except throughput:

``latency``
    cost = sum(srtt). Dijkstra.
``loss``
    cost = sum(-ln(1 - p)) = -ln(P(delivered over every hop)), so minimising it maximises
    end-to-end delivery probability. p is clamped to ``1 - 1e-6`` so a link advertising total
    loss costs ~13.8 (a dead-weight, not an infinity). Dijkstra; ties broken by latency.
``throughput``
    widest path: maximise the bottleneck; among paths of that (maximal) bottleneck, the one of
    least latency. The latency tie-break is not isotone (a prefix of the best path need not be
    the best path to the intermediate node), so Dijkstra on (width, latency) labels would get
    it wrong; instead edges join an incremental least-latency search in order of falling
    width, which also finds every node's bottleneck B, and once every edge at least as wide
    as B is in, the nodes of bottleneck B read off their paths: exact
    (:func:`overlay.pathsearch.widest`). (Widest paths are long: ~17 hops on a random
    1,000-node, degree-6 overlay.)
``composite``
    the time to move one message across the path, in seconds, per edge::

        w_lat * srtt + w_loss * COMPOSITE_LOSS_SECONDS * (-ln(1 - p))
                     + w_tp * COMPOSITE_MESSAGE_BYTES / max(throughput, THROUGHPUT_FLOOR)

    summed over the edges (the overlay stores and forwards whole frames, so serialisation time
    adds up hop by hop; -ln(1 - p) ~ p is the expected retransmissions per segment, each costing
    about one minimum RTO, RFC 6298's 1 s). ``(w_lat, w_loss, w_tp)`` is
    ``RoutingSettings.composite_weights``. Dijkstra.

Every policy is computed single-source from this node once per graph version and cached. A
destination's candidates are computed on demand and cached too: k link-disjoint alternates
(for ``throughput``: the next widest once the bottleneck is removed) and the one-hop detours
(RON: via each neighbour, then that neighbour's best path avoiding us). Paths are full source
routes, so they need not form a tree.

:class:`PathSelector` adds hysteresis on top: a path is replaced only by one better by
``margin`` continuously for ``hold_time``, or at once when it is down.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from math import log1p
from typing import Any

import attrs
import networkx as nx

from overlay.config import RoutingSettings
from overlay.pathsearch import (
    LATENCY,
    WIDTH,
    Adjacency,
    Edge,
    by_width,
    dijkstra,
    walk,
    widest,
    widest_to,
)
from tcpstack.tcp.fastinit import fast_constructor

__all__ = [
    "COMPOSITE_LOSS_SECONDS",
    "COMPOSITE_MESSAGE_BYTES",
    "LOSS_CLAMP",
    "POLICIES",
    "PathMetrics",
    "PathSelector",
    "Router",
    "THROUGHPUT_FLOOR",
    "beats",
    "cost",
    "loss_cost",
    "sort_key",
]

POLICIES: tuple[str, ...] = ("latency", "loss", "throughput", "composite")
LOSS_CLAMP = 1.0 - 1e-6
COMPOSITE_LOSS_SECONDS = 1.0  # RFC 6298 minimum RTO: what one lost segment roughly costs
COMPOSITE_MESSAGE_BYTES = 65536  # the largest overlay frame
THROUGHPUT_FLOOR = 1.0  # bytes/s; an edge with no throughput estimate yet is very slow, not absent

_INF = math.inf
# Per usable edge u -> v, an :data:`overlay.pathsearch.Edge`:
# (v, throughput, latency, 1 - loss, composite cost, u, -ln(1 - loss)).
# The Edge column each additive policy sums.
_COST_COLUMN = {"latency": LATENCY, "loss": 6, "composite": 4}


def loss_cost(p: float) -> float:
    """-ln(1 - p), with p clamped into [0, LOSS_CLAMP]."""
    return -math.log1p(-min(max(p, 0.0), LOSS_CLAMP))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(
            f"unknown routing policy {policy!r}; expected one of {', '.join(POLICIES)}"
        )


@attrs.frozen
class PathMetrics:
    """A path (source first, destination last) and its end-to-end metrics.

    ``composite`` is the composite cost under the router's weights; None when built elsewhere,
    in which case :func:`sort_key` approximates it from the aggregates.
    """

    path: tuple[str, ...]
    latency: float
    loss: float
    throughput: float
    composite: float | None = attrs.field(default=None, eq=False)

    @property
    def hops(self) -> int:
        return len(self.path) - 1


# Without attrs' per-field object.__setattr__: the router builds one per destination and policy.
_new_metrics = fast_constructor(PathMetrics)


def _approx_composite(m: PathMetrics, weights: tuple[float, float, float]) -> float:
    # Per-edge throughputs are gone: charge every hop at the bottleneck's speed (an upper bound).
    w_lat, w_loss, w_tp = weights
    return (
        w_lat * m.latency
        + w_loss * COMPOSITE_LOSS_SECONDS * loss_cost(m.loss)
        + w_tp * m.hops * COMPOSITE_MESSAGE_BYTES / max(m.throughput, THROUGHPUT_FLOOR)
    )


def cost(
    m: PathMetrics, policy: str, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> float:
    """The policy's primary figure of merit; lower is better except for ``throughput``."""
    if policy == "latency":
        return m.latency
    if policy == "loss":
        return loss_cost(m.loss)
    if policy == "throughput":
        return m.throughput
    if policy == "composite":
        return m.composite if m.composite is not None else _approx_composite(m, weights)
    _check_policy(policy)
    raise AssertionError  # unreachable


def sort_key(
    m: PathMetrics, policy: str, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> tuple[float, float, int, tuple[str, ...]]:
    """Total order, best first: the policy cost, then latency, hop count, and the path itself."""
    c = cost(m, policy, weights)
    return (-c if policy == "throughput" else c, m.latency, m.hops, m.path)


def beats(
    new: PathMetrics,
    current: PathMetrics,
    policy: str,
    margin: float,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> bool:
    """``new`` is better than ``current`` by at least ``margin`` (a fraction) under ``policy``.

    Lower cost by the fraction for additive policies, a wider bottleneck by the fraction for
    ``throughput``.
    """
    c_new, c_cur = cost(new, policy, weights), cost(current, policy, weights)
    if policy == "throughput":
        return c_new > c_cur * (1.0 + margin)
    return c_new < c_cur * (1.0 - margin)


class Router:
    """Best paths, alternates and detours from ``self_id`` under every policy; pure and lazy.

    Give it each new graph with :meth:`update`; everything is computed on first use and cached
    until the graph changes. ``max_candidates`` bounds :meth:`candidates`.

    Per graph version the graph is compiled once (:meth:`_compile`): node ids become indices
    ``0..n-1`` and every usable edge one :data:`~overlay.pathsearch.Edge` tuple holding what
    every policy needs; all searches (:mod:`overlay.pathsearch`) read those same tuples, so
    no policy copies the graph again.
    """

    def __init__(
        self, self_id: str, settings: RoutingSettings, *, max_candidates: int = 16
    ) -> None:
        if max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        self.self_id = self_id
        self.settings = settings
        self.weights: tuple[float, float, float] = settings.composite_weights
        self.max_candidates = max_candidates
        self.graph: nx.DiGraph = nx.DiGraph()
        self.ignored_edges = 0  # edges of the current graph with unusable attributes
        self._graph_version: Any = None
        self._reset()

    def _reset(self) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] | None = None  # None: not compiled for this version yet
        self._out: Adjacency = []  # u -> its usable out-edges
        self._maps: list[dict[int, Edge]] | None = None  # u -> {v: Edge}, on demand
        self._by_width: list[Edge] | None = None
        self._preds: dict[tuple[str, int, int], list[int]] = {}
        self._best: dict[str, dict[str, PathMetrics]] = {}
        self._cands: dict[tuple[str, str, int], list[PathMetrics]] = {}

    def update(self, graph: nx.DiGraph) -> None:
        """Route over ``graph`` from now on; caches survive if it is the same graph version.

        A graph from :meth:`LinkStateDatabase.graph` carries ``graph.graph["version"]``; any
        other graph invalidates the caches on every call.
        """
        version = graph.graph.get("version")
        if graph is self.graph and version is not None and version == self._graph_version:
            return
        self.graph = graph
        self._graph_version = version
        self._reset()

    # -- per-version tables ------------------------------------------------------------------

    def _compile(self) -> dict[str, int]:
        """Index the nodes and tabulate every usable edge with sane attributes, once per
        graph version; returns the node index (id -> int).

        Edges marked down and self-loops are left out, and so are edges whose numbers are
        missing, negative, NaN or infinite (a graph not built by the link-state database may
        hold anything); those are counted in :attr:`ignored_edges`.
        """
        if self._index is not None:
            return self._index
        # networkx's own algorithms read G._succ: the public edge views cost ~1.5 us per edge.
        succ = self.graph._succ
        names = list(succ)
        index = {u: i for i, u in enumerate(names)}
        out: Adjacency = []
        ignored = 0
        w_lat, w_loss, w_tp = self.weights
        scale, size = w_loss * COMPOSITE_LOSS_SECONDS, w_tp * COMPOSITE_MESSAGE_BYTES
        inf, clamp, floor = _INF, LOSS_CLAMP, THROUGHPUT_FLOOR  # locals: this loop is per edge
        for i, (u, nbrs) in enumerate(succ.items()):
            row: list[Edge] = []
            out.append(row)
            add = row.append
            loop = u in nbrs  # a self-loop: looked for once per node, not per edge
            for v, d in nbrs.items():
                try:  # subscripts: this loop runs once per edge and version
                    lat, loss, tp, up = d["latency"], d["loss"], d["throughput"], d["up"]
                except KeyError:
                    lat, loss = d.get("latency"), d.get("loss", 0.0)
                    tp, up = d.get("throughput", 0.0), d.get("up", True)
                if not up or (loop and u == v):
                    continue
                try:
                    # Every comparison with NaN is false; a non-number raises TypeError. (One
                    # test, no bool stored: this runs per edge.)
                    if not (
                        lat >= 0.0
                        and lat < inf
                        and tp >= 0.0
                        and tp < inf
                        and loss >= 0.0
                        and loss <= 1.0
                    ):
                        ignored += 1
                        continue
                except TypeError:
                    ignored += 1
                    continue
                lc = -log1p(-(loss if loss < clamp else clamp))
                comp = w_lat * lat + scale * lc + size / (tp if tp > floor else floor)
                add((index[v], tp, lat, 1.0 - loss, comp, i, lc))
        self._names, self._out = names, out
        self._index = index
        self.ignored_edges = ignored
        return index

    def _edge_maps(self) -> list[dict[int, Edge]]:
        """u -> {v: Edge}, for looking edges up by their ends."""
        if self._maps is None:
            self._compile()
            self._maps = [{e[0]: e for e in row} for row in self._out]
        return self._maps

    def _best_path(
        self, dst: int, policy: str, source: int, avoid: int = -1
    ) -> tuple[int, ...] | None:
        """Best path from ``source`` to ``dst`` not through ``avoid`` under an additive
        ``policy`` (throughput searches per destination, :func:`widest_to`): one cached
        single-source search per (policy, source, avoid) and graph version."""
        if dst == source:
            return None
        key = (policy, source, avoid)
        pred = self._preds.get(key)
        if pred is None:
            pred = self._preds[key] = dijkstra(self._out, source, _COST_COLUMN[policy], avoid)[0]
        return walk(pred, source, dst) if pred[dst] >= 0 else None

    def _best_table(self, policy: str) -> dict[str, PathMetrics]:
        """Best path and its metrics to every destination: one search, one pass."""
        table = self._best.get(policy)
        if table is not None:
            return table
        table = {}
        index = self._compile()
        source = index.get(self.self_id)
        if source is None:
            pass  # we are not in the graph: nothing is reachable
        elif policy == "throughput":
            names = self._names
            if self._by_width is None:
                self._by_width = by_width(self._out)
            # keep = 1 - loss and extra = composite cost: the metrics come out of the search,
            # and the paths come out in node ids.
            found = widest(self._out, self._by_width, source, labels=names)
            for v, (route, lat, width, delivered, comp) in found.items():
                table[names[v]] = _new_metrics(route, lat, 1.0 - delivered, width, comp)
        else:
            pred, order, via = dijkstra(self._out, source, _COST_COLUMN[policy])
            self._preds[(policy, source, -1)] = pred
            # Settle order is a topological order of the tree: aggregate along it.
            names = self._names
            n = len(names)
            p_path: list[tuple[str, ...]] = [()] * n
            p_lat, p_del, p_width, p_comp = [0.0] * n, [1.0] * n, [_INF] * n, [0.0] * n
            p_path[source] = (names[source],)
            for v in order[1:]:
                e = via[v]
                assert e is not None  # every settled node but the source has a tree edge
                u = e[5]
                path = p_path[v] = (*p_path[u], names[v])
                lat = p_lat[v] = p_lat[u] + e[2]
                delivered = p_del[v] = p_del[u] * e[3]
                w = p_width[u]
                width = p_width[v] = e[1] if e[1] < w else w
                comp = p_comp[v] = p_comp[u] + e[4]
                table[names[v]] = _new_metrics(path, lat, 1.0 - delivered, width, comp)
        self._best[policy] = table
        return table

    # -- queries -----------------------------------------------------------------------------

    def best(self, dst: str, policy: str) -> PathMetrics | None:
        """The best path to ``dst`` under ``policy``; None if unreachable or ``dst`` is us."""
        _check_policy(policy)
        return self._best_table(policy).get(dst)

    def best_all(self, policy: str) -> dict[str, PathMetrics]:
        """The best path to every reachable destination under ``policy`` (a new dict)."""
        _check_policy(policy)
        return dict(self._best_table(policy))

    def candidates(self, dst: str, policy: str, k: int | None = None) -> list[PathMetrics]:
        """The best path, then up to ``k`` alternates and the one-hop detours, best first.

        Alternates (``k`` defaults to ``settings.alternates``) are link-disjoint from the best
        path and each other, found greedily: the best path once the links of the paths before
        are removed, so one link failure cannot take them all. For ``throughput`` only the
        previous bottleneck edges are removed: the next widest path. Detours (RON: one
        intermediate is usually enough): via each neighbour ``n``, the direct edge if ``n`` is
        ``dst``, else ``self -> n`` then ``n``'s best path to ``dst`` not back through us.
        Distinct paths, the best first and the rest by :func:`sort_key`, at most
        ``max_candidates``.
        """
        _check_policy(policy)
        if k is None:
            k = self.settings.alternates
        if k < 0:
            raise ValueError("k must be >= 0")
        key = (policy, dst, k)
        cached = self._cands.get(key)
        if cached is not None:
            return list(cached)
        best = self.best(dst, policy)
        out: list[PathMetrics] = []
        if best is not None:
            seen = {best.path}
            for path in itertools.chain(
                self._alternates(dst, policy, best, k), self._detours(dst, policy)
            ):
                if path not in seen:
                    seen.add(path)
                    m = self.evaluate(path)
                    if m is not None:
                        out.append(m)
            out.sort(key=lambda m: sort_key(m, policy, self.weights))
            out = [best, *out][: self.max_candidates]
        self._cands[key] = out
        return list(out)

    def _alternates(
        self, dst: str, policy: str, best: PathMetrics, k: int
    ) -> list[tuple[str, ...]]:
        index = self._compile()
        source, target = index.get(self.self_id), index.get(dst)
        if source is None or target is None:
            return []
        maps, names, adj = self._edge_maps(), self._names, self._out
        out: list[tuple[str, ...]] = []
        banned: set[tuple[int, int]] = set()
        path: tuple[int, ...] | None = tuple(index[u] for u in best.path)
        while path is not None and len(out) < k:
            hops = list(zip(path, path[1:], strict=False))
            if policy == "throughput":
                narrow = min(maps[u][v][WIDTH] for u, v in hops)
                banned.update((u, v) for u, v in hops if maps[u][v][WIDTH] == narrow)
                path = widest_to(adj, source, target, frozenset(banned))
            else:
                # Both directions: they are one peer link (one TCP connection) and fail together.
                banned.update(hops)
                banned.update((v, u) for u, v in hops)
                pred, _, _ = dijkstra(
                    adj, source, _COST_COLUMN[policy], -1, target, frozenset(banned)
                )
                path = walk(pred, source, target) if pred[target] >= 0 else None
            if path is not None:
                out.append(tuple(map(names.__getitem__, path)))
        return out

    def _detours(self, dst: str, policy: str) -> list[tuple[str, ...]]:
        index = self._compile()
        source, target = index.get(self.self_id), index.get(dst)
        if source is None or target is None:
            return []
        names = self._names
        out: list[tuple[str, ...]] = []
        for n in self._edge_maps()[source]:
            if n == target:
                out.append((self.self_id, dst))
                continue
            if policy == "throughput":
                # A full widest search per neighbour costs ~5 of these: search per destination.
                tail = widest_to(self._out, n, target, avoid=source)
            else:
                tail = self._best_path(target, policy, n, avoid=source)
            if tail is not None:
                out.append((self.self_id, *map(names.__getitem__, tail)))
        return out

    def select(
        self, selector: PathSelector, dst: str, policy: str, now: float
    ) -> PathMetrics | None:
        """One hysteresis step for ``dst``: re-evaluate the selector's current path on this
        graph (None if it broke) and let it choose among :meth:`candidates`."""
        current = self.evaluate(selector.path) if selector.path is not None else None
        if current is not None and current.path[-1] != dst:
            current = None
        return selector.choose(current, self.candidates(dst, policy), policy, now)

    def evaluate(self, path: Sequence[str]) -> PathMetrics | None:
        """Metrics of ``path`` on the current graph; None unless it is a usable simple path."""
        path = tuple(path)
        if len(path) < 2 or len(set(path)) != len(path):
            return None
        index, maps = self._compile(), self._edge_maps()
        latency, delivered, width, comp = 0.0, 1.0, _INF, 0.0
        u = index.get(path[0], -1)
        for name in path[1:]:
            v = index.get(name, -1)
            e = maps[u].get(v) if u >= 0 else None
            if e is None:
                return None
            latency += e[2]
            delivered *= e[3]
            width = e[1] if e[1] < width else width
            comp += e[4]
            u = v
        return PathMetrics(path, latency, 1.0 - delivered, width, comp)


class PathSelector:
    """Hysteresis for one (destination, policy): which path to use now.

    The current path is kept unless some candidate has beaten it by ``margin``
    (:func:`beats`) at every call for at least ``hold_time``; then the best such candidate
    wins. If the current path is down (``current`` is None) the best candidate is taken at
    once. Each challenger has its own "better since" time, and a challenger that fails to beat
    the current path at one call starts over, so noise around the margin cannot accumulate.
    """

    def __init__(self, settings: RoutingSettings) -> None:
        self.settings = settings
        self.weights: tuple[float, float, float] = settings.composite_weights
        self.path: tuple[str, ...] | None = None  # what we chose last
        self.switches = 0  # changes from one path to another (the first choice is not one)
        self.last_reason = ""
        self._better_since: dict[tuple[str, ...], float] = {}

    def choose(
        self,
        current: PathMetrics | None,
        candidates: Sequence[PathMetrics],
        policy: str,
        now: float,
    ) -> PathMetrics | None:
        """The path to use; ``current`` is our path re-evaluated now, None if it is down/absent.

        ``last_reason`` says why: "initial", "down" (current gone, switched at once), "better"
        (held for ``hold_time``), "kept", or "unreachable".
        """
        _check_policy(policy)
        if not candidates and current is None:
            self._set(None, "unreachable")
            return None
        if current is not None:
            # The candidate list may carry fresher numbers for the same path.
            current = next((c for c in candidates if c.path == current.path), current)
        ranked = sorted(candidates, key=lambda m: sort_key(m, policy, self.weights))
        if current is None:
            choice = ranked[0]
            self._set(choice.path, "initial" if self.path is None else "down")
            return choice
        if self.path != current.path:
            self._better_since.clear()
            self.path = current.path
        margin, hold = self.settings.margin, self.settings.hold_time
        since = self._better_since
        challengers = [
            c
            for c in ranked
            if c.path != current.path and beats(c, current, policy, margin, self.weights)
        ]
        alive = {c.path for c in challengers}
        for path in list(since):
            if path not in alive:
                del since[path]
        for c in challengers:
            since.setdefault(c.path, now)
        for c in challengers:  # ranked order: the best of those that held long enough
            if now - since[c.path] >= hold:
                self._set(c.path, "better")
                return c
        self.last_reason = "kept"
        return current

    def _set(self, path: tuple[str, ...] | None, reason: str) -> None:
        if self.path is not None and path is not None and path != self.path:
            self.switches += 1
        if path != self.path:
            self._better_since.clear()
        self.path = path
        self.last_reason = reason
